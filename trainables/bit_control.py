"""The bit LM's run-time modes (seed 004): telemetry, the safety gate, drift, diffusion training.

:class:`BitLMControl` holds what a bit-LM run carries across evaluations and is called by the
training loop at three places:

- :meth:`BitLMControl.training_batch`: for the diffusion denoiser (``model.causal: false``) the
  clean bits are corrupted (``diffusion.noise`` at a ``diffusion.schedule`` level, optionally a
  curriculum) and the targets keep only the corrupted positions;
- :meth:`BitLMControl.evaluate`: ``telemetry/K`` and ``telemetry/S`` of the validation
  predictions, ``telemetry/C`` of a gated generation (:func:`safe_generate` with the floors
  ``telemetry.floor_C`` / ``floor_S``, ``telemetry/refused`` counts refusals over the run), for the
  denoiser also its validation loss, ``val/bpb`` (the masked-diffusion ELBO bound),
  ``val/parity_error`` and ``diffusion/parity_fixes``; then metric drift over the last
  ``telemetry.drift_window`` evaluations (``telemetry/drift`` and ``telemetry/drift/<m>`` at a
  drift, ``telemetry/drift_events`` in total, ``telemetry/halted`` when it stops the run);
- :meth:`BitLMControl.write_artifacts`: the samples (``samples.txt`` or
  ``diffusion_samples.txt``) and ``distilled_metrics.json``, into a checkpoint's ``artifacts/``
  folder, which the tracker uploads to the trial's MLflow run when the trial ends.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.config import RunConfig
from trainables.data import BitCorpus
from trainables.models.bit_diffusion import (
    IGNORE,
    bits_to_text,
    corrupt,
    denoising_batch,
    diffusion_sample,
)
from trainables.models.bit_safety import detect_drift, safe_generate
from trainables.models.bit_telemetry import (
    S_BLOCK,
    bit_probs,
    negentropy,
    pattern_distribution,
    symbiosis,
)
from trainables.parallel import unwrap
from trainables.telemetry_events import (
    ARTIFACTS_DIR,
    CHANGE_PREFIX,
    COUNT,
    HALTED,
    MARKER,
    drift_reason,
)

DRIFT_KEYS = ("telemetry/K", "telemetry/C", "telemetry/S")
ELBO_LEVELS = 8  # quadrature points of the diffusion ELBO over the masking rate
KEPT_SAMPLES = 20  # evaluations whose samples the text artifact keeps
PREFIX_BYTES = 4  # validation bytes that prompt a causal generation


class BitLMControl:
    """Telemetry, safety gate, drift and diffusion state of one bit-LM run (see module doc)."""

    def __init__(self, cfg: RunConfig, data: BitCorpus) -> None:
        self.cfg = cfg
        self.data = data
        self.causal = cfg.model.causal
        self.noise_generator = torch.Generator().manual_seed(cfg.train.seed + 15485863)
        self.refused = 0
        self.history: list[dict[str, float]] = []
        self.events: list[dict[str, Any]] = []
        self.samples: list[str] = []
        self.distilled: list[dict[str, Any]] | None = None
        self.halt_reason: str | None = None
        self.q_ref = self._reference_distribution()
        self._tmp = tempfile.TemporaryDirectory(prefix="bitsweep-bitlm-")

    def _reference_distribution(self) -> Tensor:
        """S's reference: the pattern distribution of the training bits (a fixed sample)."""
        g = torch.Generator().manual_seed(self.cfg.train.seed + 2)
        x, _ = self.data.get_batch("train", 64, self._seq_len(), g)
        return pattern_distribution(x.float(), S_BLOCK)

    def _seq_len(self) -> int:
        seq_len = min(self.cfg.model.seq_len, 9 * (self.data.num_bytes("val") - 1))
        return seq_len - seq_len % 9

    # ---- training -----------------------------------------------------------------------------

    def training_batch(self, x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """``(inputs, targets)`` of one step: unchanged for the causal model; for the denoiser the
        clean bits ``x`` corrupted, with targets only at the corrupted positions."""
        if self.causal:
            return x, y
        d = self.cfg.diffusion
        progress = step / max(self.cfg.train.steps, 1) if d.curriculum else None
        inputs, targets = denoising_batch(
            x.cpu(), schedule=d.schedule, noise=d.noise, generator=self.noise_generator,
            progress=progress,
        )  # fmt: skip
        return inputs.to(x.device), targets.to(x.device)

    def artifact_files(self) -> tuple[tuple[str, Path], ...]:
        """``(name, path)`` of the files for the run's artifacts (written now, in a temp folder)."""
        folder = Path(self._tmp.name)
        self.write_artifacts(folder)
        return tuple((p.name, p) for p in sorted((folder / ARTIFACTS_DIR).iterdir()))

    # ---- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """The telemetry (and, for the denoiser, validation) metrics of this evaluation."""
        raw = unwrap(model)
        was_training = raw.training
        raw.eval()
        try:
            metrics = self._prediction_metrics(raw)
            metrics.update(self._gated_generation(raw, step))
        finally:
            raw.train(was_training)
        metrics.update(self._drift(metrics, step))
        return metrics

    @torch.no_grad()
    def validation(self, model: nn.Module) -> dict[str, float]:
        """The denoiser's ``val/loss`` (and ``val/bpb``) alone, telemetry state untouched.

        ``{}`` for the causal model, whose validation is :func:`trainables.evaluation.evaluate`'s.
        """
        if self.causal:
            return {}
        raw = unwrap(model)
        was_training = raw.training
        raw.eval()
        try:
            return self._denoiser_validation(raw, self._val_batches())
        finally:
            raw.train(was_training)

    @torch.no_grad()
    def measure(self, model: nn.Module) -> dict[str, float]:
        """K, C, S of another model (a distilled student): one generation, no retries, no state."""
        raw = unwrap(model)
        raw.eval()
        metrics = self._prediction_metrics(raw)
        sample, _ = self._sampler(raw)
        t = self.cfg.telemetry
        gate = safe_generate(sample, q_ref=self.q_ref, floor_C=t.floor_C, floor_S=t.floor_S,
                             retries=0, seed=self.cfg.train.seed)  # fmt: skip
        return {"K": metrics["telemetry/K"], "C": gate.C, "S": metrics["telemetry/S"]}

    def _val_batches(self) -> list[tuple[Tensor, Tensor]]:
        return list(
            self.data.iter_eval_batches(
                "val", batch_size=self.cfg.train.batch_size, seq_len=self._seq_len(),
                max_batches=self.cfg.data.eval_batches,
            )
        )  # fmt: skip

    def _prediction_metrics(self, raw: nn.Module) -> dict[str, float]:
        device = next(raw.parameters()).device
        probs: list[Tensor] = []
        references: list[Tensor] = []
        batches = self._val_batches()
        for x, y in batches:
            if self.causal:
                inputs, reference = x, y
            else:  # the denoiser's predictions of half-masked windows
                g = torch.Generator().manual_seed(self.cfg.train.seed + 3)
                inputs, _ = corrupt(x, 0.5, self.cfg.diffusion.noise, g)
                reference = x
            probs.append(bit_probs(raw(inputs.to(device)).logits).cpu())
            references.append(reference)
        p, ref = torch.cat(probs), torch.cat(references)
        metrics = {
            "telemetry/K": float(negentropy(p)),
            "telemetry/S": float(symbiosis(p, ref)),
        }
        if not self.causal:
            metrics.update(self._denoiser_validation(raw, batches))
        return metrics

    def _denoiser_validation(
        self, raw: nn.Module, batches: list[tuple[Tensor, Tensor]]
    ) -> dict[str, float]:
        """``val/loss``: denoising CE per corrupted bit, mean over masking rates; ``val/bpb``.

        For mask noise, ``val/bpb`` is the continuous-time ELBO of absorbing diffusion (Shi et al.
        2024; Sahoo et al. 2024): ``-log p(x) <= int_0^1 (1/m) E[sum of masked CE at rate m] dm``,
        a midpoint rule over ``ELBO_LEVELS`` rates, in bits per byte: an upper bound comparable
        with a causal model's ``val/bpb``. Flip noise has no such simple bound (no ``val/bpb``).
        """
        device = next(raw.parameters()).device
        g = torch.Generator().manual_seed(self.cfg.train.seed + 5)
        ce_per_bit = bound = 0.0
        count = 0
        for level in ((i + 0.5) / ELBO_LEVELS for i in range(ELBO_LEVELS)):
            for x, _ in batches:
                inputs, corrupted = corrupt(x, level, self.cfg.diffusion.noise, g)
                targets = torch.where(corrupted, x, torch.full_like(x, IGNORE)).to(device)
                logits = raw(inputs.to(device)).logits.float()  # [b, T, 2]
                ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # [b, T]
                masked = corrupted.sum(dim=1).clamp_min(1).to(device)  # [b]
                ce_per_bit += float((ce.sum(dim=1) / masked).mean())
                bound += float(ce.sum(dim=1).mean()) / level / (x.shape[1] / 9)  # nats per byte
                count += 1
        metrics = {"val/loss": ce_per_bit / count}
        if self.cfg.diffusion.noise == "mask":
            metrics["val/bpb"] = bound / count / math.log(2)
        return metrics

    def _sampler(self, raw: nn.Module) -> tuple[Any, dict[str, int]]:
        """The model's sampler (seed -> generated bits) and the parity fixes it made."""
        t = self.cfg.telemetry
        device = next(raw.parameters()).device
        fixes = {"last": 0}
        if self.causal:
            x, _ = self._val_batches()[0]
            prefix = x[: t.gen_samples, : 9 * PREFIX_BYTES].to(device)
            n_bytes = min(t.gen_bytes, raw.config.seq_len // 9)

            def sample(seed: int) -> Tensor:
                g = torch.Generator(device=device).manual_seed(seed)
                bits = raw.generate(prefix, n_bytes, generator=g)
                return bits[:, prefix.shape[1] :].cpu()

            return sample, fixes
        d = self.cfg.diffusion

        def denoise(seed: int) -> Tensor:
            bits, fixes["last"] = diffusion_sample(
                lambda x: raw(x).logits, min(t.gen_bytes, raw.config.seq_len // 9),
                steps=d.steps, schedule=d.schedule, noise=d.noise,
                generator=torch.Generator().manual_seed(seed), batch=t.gen_samples, device=device,
            )  # fmt: skip
            return bits.cpu()

        return denoise, fixes

    def _gated_generation(self, raw: nn.Module, step: int) -> dict[str, float]:
        t = self.cfg.telemetry
        sample, fixes = self._sampler(raw)
        gate = safe_generate(
            sample, q_ref=self.q_ref, floor_C=t.floor_C, floor_S=t.floor_S, retries=t.retries,
            seed=self.cfg.train.seed * 1000 + step,
        )  # fmt: skip
        self.refused += gate.refused
        metrics = {
            "telemetry/C": gate.C,
            "telemetry/S_gen": gate.S,
            "telemetry/refused": float(self.refused),
            "telemetry/gate_passed": float(gate.passed),
        }
        if not self.causal:
            bytes_sampled = gate.bits.numel() / 9
            metrics["diffusion/parity_fixes"] = float(fixes["last"])
            metrics["val/parity_error"] = fixes["last"] / bytes_sampled  # before the correction
        texts = [bits_to_text(row).decode("latin-1") for row in gate.bits]
        status = "passed" if gate.passed else f"refused {gate.refused}x, kept the closest"
        header = f"--- step {step}: C={gate.C:.3f} S={gate.S:.3f} ({status})"
        self.samples = [*self.samples, "\n".join([header, *map(repr, texts)])][-KEPT_SAMPLES:]
        return metrics

    def _drift(self, metrics: dict[str, float], step: int) -> dict[str, float]:
        t = self.cfg.telemetry
        self.history.append({k: metrics[k] for k in DRIFT_KEYS if k in metrics})
        drifted = detect_drift(self.history, DRIFT_KEYS, window=t.drift_window,
                               thresh=t.drift_thresh)  # fmt: skip
        out: dict[str, float] = {COUNT: float(len(self.events))}
        if not drifted:
            return out
        event = {"step": step, "window": t.drift_window, "thresh": t.drift_thresh,
                 "changes": drifted, "halted": t.halt_on_drift}  # fmt: skip
        self.events.append(event)
        out[COUNT] = float(len(self.events))
        out[MARKER] = float(len(drifted))
        for key, change in drifted.items():
            out[f"{CHANGE_PREFIX}{key.split('/')[-1]}"] = change
        if t.halt_on_drift:
            self.halt_reason = drift_reason(drifted, t.drift_window, t.drift_thresh)
            out[HALTED] = 1.0
        return out

    # ---- checkpoints and artifacts ------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What a checkpoint carries (plain data)."""
        return {"refused": self.refused, "history": self.history, "events": self.events,
                "samples": self.samples, "noise": self.noise_generator.get_state()}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`'s output."""
        self.refused = int(state["refused"])
        self.history, self.events = list(state["history"]), list(state["events"])
        self.samples = list(state["samples"])
        self.noise_generator.set_state(state["noise"])

    def write_artifacts(self, checkpoint_dir: Path) -> None:
        """Samples and distillation records into ``checkpoint_dir/artifacts`` (the drift events
        reach MLflow as metrics, :mod:`trainables.telemetry_events`)."""
        folder = checkpoint_dir / ARTIFACTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        name = "samples.txt" if self.causal else "diffusion_samples.txt"
        (folder / name).write_text("\n".join(self.samples) + "\n")
        if self.distilled is not None:
            floors = {"C": self.cfg.telemetry.floor_C, "S": self.cfg.telemetry.floor_S}
            record = {"floors": floors, "attempts": self.distilled,
                      "passed": any(a["passed"] for a in self.distilled)}  # fmt: skip
            (folder / "distilled_metrics.json").write_text(json.dumps(record, indent=2))

    def distill(self, model: nn.Module, architecture: Any) -> dict[str, float]:
        """Run ``distill`` (:mod:`trainables.distill_control`); keeps the attempt records."""
        from trainables.distill_control import distill

        metrics, self.distilled = distill(self.cfg, unwrap(model), architecture, self.data, self)
        return metrics


def bit_lm_control(
    cfg: RunConfig, data: object, extra: dict[str, Any] | None = None
) -> BitLMControl | None:
    """The control of a bit-LM run (restored from a checkpoint's ``extra``), else None."""
    if cfg.model.arch != "bit_lm" or not isinstance(data, BitCorpus):
        return None
    control = BitLMControl(cfg, data)
    if extra is not None and "bit_control" in extra:
        control.restore(extra["bit_control"])
    return control
