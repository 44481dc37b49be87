"""The training loop: a plain function of a run config, data and a reporter. No Ray here.

One loop serves every scheme and task. Per step it sets the lam schedule and learning rate,
computes the joint loss (:mod:`trainables.objective`), and every ``train.eval_every`` steps it
evaluates at lam = 1, reports the metrics contract, may grow the model (seed 004) and offers a
checkpoint. A checkpoint holds the (grown) architecture, model, optimizer, schedule state, step
and RNG states, so a resumed run continues exactly where the first one stopped.

A run started from step 0 adds two measurements to its first report, without a report of their
own (Tune's schedulers count reports): ``perf/saved_activation_mib`` (the activation memory of
its first micro-batch) and, with ``train.eval_at_start``, ``val/loss_start`` (``val/bpb_start``
or ``val/acc_start``), the model evaluated before the first step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainables import metric_names as names
from trainables.activation_memory import MIB
from trainables.bit_control import BitLMControl, bit_lm_control
from trainables.build import (
    Architecture,
    TaskData,
    architecture_of,
    build_model,
    initial_architecture,
    load_task_data,
)
from trainables.config import RunConfig
from trainables.data import ByteCorpus, iterate_batches
from trainables.evaluation import evaluate
from trainables.growth_control import (
    GrowthState,
    attach_freeze,
    grow_model,
    last_event_metrics,
    should_grow,
)
from trainables.hf_pipeline import copy_artifacts, training_manifest, write_training_manifest
from trainables.metrics import layer_bit_widths, model_size
from trainables.objective import TrainingObjective
from trainables.parallel import Parallel, pick_device, unwrap
from trainables.quant import (
    BitLinear,
    LambdaSchedule,
    LSQLayer,
    apply_lambda_schedule,
    initialize_step_sizes,
    param_groups,
    save_packed_checkpoint,
)
from trainables.reporting import CheckpointWriter, Reporter
from trainables.train_step import accumulate_gradients, clip_gradients

PACKED_DIR = "packed"
# what the evaluation before the first step (train.eval_at_start) reports each metric as
START_NAMES = {names.VAL_LOSS: names.VAL_LOSS_START, names.VAL_BPB: names.VAL_BPB_START,
               names.VAL_ACC: names.VAL_ACC_START}  # fmt: skip


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves: final metrics, the model and its architecture."""

    metrics: dict[str, float]
    model: nn.Module
    architecture: Architecture
    step: int
    history: list[dict[str, float]] = field(default_factory=list)


class _Batches:
    """Deterministic training batches whose position can be saved and restored."""

    def __init__(self, cfg: RunConfig, data: TaskData, seed: int, device: torch.device) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch_state = self.generator.get_state()
        self.epoch_index = 0
        self._epoch: Any = None

    def next(self, seq_len: int) -> tuple[Tensor, Tensor]:
        """The next ``(inputs, targets)`` batch on the training device."""
        bs = self.cfg.train.batch_size
        if isinstance(self.data, ByteCorpus):
            x, y = self.data.get_batch("train", bs, seq_len, self.generator)
        else:
            x, y = self._next_image_batch(bs)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _next_image_batch(self, bs: int) -> tuple[Tensor, Tensor]:
        if self._epoch is None:
            self._start_epoch()
        try:
            batch = next(self._epoch)
        except StopIteration:
            self._start_epoch()
            batch = next(self._epoch)
        self.epoch_index += 1
        return batch

    def _start_epoch(self) -> None:
        data = self.data
        self.epoch_state = self.generator.get_state()
        self.epoch_index = 0
        bs = min(self.cfg.train.batch_size, len(data.train_images))
        self._epoch = iterate_batches(
            data.train_images, data.train_labels, batch_size=bs, generator=self.generator,
            drop_last=True,
        )  # fmt: skip

    def state(self) -> dict[str, Any]:
        """The position to resume from."""
        if isinstance(self.data, ByteCorpus) or self._epoch is None:
            return {"generator": self.generator.get_state(), "epoch_index": -1}
        return {"generator": self.epoch_state, "epoch_index": self.epoch_index}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by :meth:`state`."""
        self.generator.set_state(state["generator"])
        if state["epoch_index"] >= 0:
            self._start_epoch()
            for _ in range(state["epoch_index"]):
                next(self._epoch)
            self.epoch_index = state["epoch_index"]


def _optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    # learned bit-widths get their own group at quant.bit_lr (see trainables/quant/optim.py), an
    # option of the schemes that learn bit-widths only
    bit_lr = cfg.quant.option_values().get("bit_lr")
    groups = param_groups(
        model, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, bit_lr=bit_lr
    )
    return torch.optim.AdamW(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def learning_rate(cfg: RunConfig, step: int, growth: GrowthState) -> float:
    """The learning rate at ``step``: schedule x warm-up x the growth rule of seed 004."""
    lr = cfg.train.lr * growth.lr_scale
    if cfg.schedule.lr_schedule == "cosine":
        progress = min(step / max(cfg.train.steps, 1), 1.0)
        lr *= 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule.lr_warmup_steps:
        lr *= min(1.0, (step + 1) / cfg.schedule.lr_warmup_steps)
    if growth.warmup_start is not None and cfg.growth.lr_warmup_steps:
        lr *= min(1.0, (step - growth.warmup_start + 1) / cfg.growth.lr_warmup_steps)
    return lr


def _tokens_per_sample(data: TaskData, model: nn.Module) -> int:
    return model.config.seq_len if isinstance(data, ByteCorpus) else 1


def train(
    cfg: RunConfig,
    *,
    data: TaskData | None = None,
    reporter: Reporter | None = None,
    parallel: Parallel | None = None,
    resume_from: Path | None = None,
    stop_after: int | None = None,
    checkpoint_every: int | None = None,
) -> TrainResult:
    """Train one run as ``cfg`` says, reporting to ``reporter`` at every evaluation.

    Args:
        cfg: the validated run config.
        data: the task's data (loaded from ``cfg.data`` when omitted).
        reporter: receives the metrics contract at every evaluation and checkpoint writers.
        parallel: the data-parallel context (a single process by default).
        resume_from: a checkpoint directory written by an earlier run of the same config.
        stop_after: stop after this many steps in total (for tests of resuming); the schedules
            still follow ``train.steps``.
        checkpoint_every: offer a checkpoint every this many steps (rounded to evaluations;
            default: every evaluation). The final step always offers one, with the packed model.

    Returns:
        The final metrics, the trained single-device model and its (possibly grown) architecture.
    """
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    parallel = parallel or Parallel(device=pick_device(cfg.train.device))
    if cfg.growth.enabled and parallel.strategy == "fsdp" and parallel.world_size > 1:
        raise ValueError("growth.enabled is not supported with resources.strategy 'fsdp'; use ddp")
    data = data if data is not None else load_task_data(cfg)
    extra = Parallel.read_extra(resume_from) if resume_from is not None else None
    if extra is not None:
        architecture = Architecture(extra["architecture"]["arch"], extra["architecture"]["config"])
    else:
        architecture = initial_architecture(cfg, data)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, architecture).to(parallel.device)
    if extra is None:
        _initialize_step_sizes(model, cfg, data, parallel)
    growth = GrowthState.from_dict(extra["growth"]) if extra is not None else GrowthState()
    _attach_template(model, parallel)
    wrapped = parallel.wrap(model)
    optimizer = _optimizer(cfg, model)  # after wrapping: FSDP2 replaces the parameters
    batches = _Batches(cfg, data, cfg.train.seed + 7919 * parallel.rank, parallel.device)
    step = 0
    if extra is not None and resume_from is not None:
        parallel.load(resume_from, wrapped, optimizer)
        attach_freeze(model, optimizer, growth)  # a freeze window open at the checkpoint
        step = int(extra["step"])
        batches.restore(extra["rng"]["batches"])
        torch.set_rng_state(extra["rng"]["torch"])
    objective = TrainingObjective(cfg, model)
    control = bit_lm_control(cfg, data, extra)  # bit_lm: telemetry, safety gate, diffusion
    if control is not None:
        objective.telemetry_reference = control.q_ref
    banner = objective.banner()
    if banner and parallel.is_main and step == 0:
        print(banner, flush=True)
    schedule = LambdaSchedule(
        kind=cfg.schedule.kind,
        warmup_frac=cfg.schedule.lambda_warmup_frac,
        k=cfg.schedule.k,
        value=cfg.schedule.value,
    )
    total_steps = cfg.train.steps
    last_step = min(stop_after, total_steps) if stop_after is not None else total_steps
    every = checkpoint_every or cfg.train.eval_every
    window: dict[str, float] = {}
    window_steps = 0
    window_time = 0.0
    window_samples = 0
    history: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    first_report: dict[str, float] = {}  # step 0's measurements, added to the first report
    try:
        if cfg.train.eval_at_start and step == 0:  # not on resume: the start is long gone
            # at step 0's lam, so the layers are set as training starts (they evaluate at 1)
            apply_lambda_schedule(model, schedule, 0, total_steps,
                                  applies_to=cfg.schedule.applies_to)  # fmt: skip
            evaluated = wrapped if parallel.strategy == "fsdp" else model
            first_report.update(_start_metrics(evaluated, data, cfg, control, parallel.device))
        while step < last_step:
            started = time.perf_counter()
            lam = apply_lambda_schedule(
                model, schedule, step, total_steps, applies_to=cfg.schedule.applies_to
            )
            lr = learning_rate(cfg, step, growth)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # bit-widths: quant.bit_lr
            wrapped.train()
            if hasattr(model, "set_step"):
                model.set_step(step)
            seq_len = model.config.seq_len if isinstance(data, ByteCorpus) else 0
            micro = [batches.next(seq_len) for _ in range(cfg.train.grad_accum)]
            if control is not None:  # the diffusion denoiser trains on corrupted bits
                micro = [control.training_batch(x, y, step) for x, y in micro]
            optimizer.zero_grad(set_to_none=True)
            # seed 003's knobs: grad_accum micro-batches, bf16 autocast, the pre-clip grad norm
            # the activation memory of step 0's first micro-batch only: the hooks slow a step
            done = accumulate_gradients(
                wrapped, objective, micro, step, precision=cfg.train.precision,
                measure_activations=step == 0 and parallel.is_main,
            )  # fmt: skip
            if done.saved_activation_bytes is not None:
                first_report[names.PERF_SAVED_ACTIVATION] = done.saved_activation_bytes / MIB
            grad_norm = clip_gradients(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            step += 1
            window_time += time.perf_counter() - started
            window_samples += done.samples * parallel.world_size
            window_steps += 1
            step_values = {**done.losses, names.TRAIN_GRAD_NORM: grad_norm, **done.metrics}
            for name, value in step_values.items():
                window[name] = window.get(name, 0.0) + value
            if step % cfg.train.eval_every and step != last_step:
                continue
            metrics = {names.STEP: float(step), names.QUANT_LAMBDA: lam, names.TRAIN_LR: lr}
            metrics.update(parallel.mean_dict({k: v / window_steps for k, v in window.items()}))
            metrics.update(evaluate(wrapped if parallel.strategy == "fsdp" else model, data, cfg))
            if control is not None:  # telemetry K, C, S, the gate, drift (may halt the run)
                metrics.update(control.evaluate(model, step))
                last_step = step if control.halt_reason else last_step
            metrics.update(model_size(model))
            metrics.update(layer_bit_widths(model))
            rate = window_samples / window_time if window_time > 0 else 0.0
            if isinstance(data, ByteCorpus):
                metrics[names.PERF_TOKENS] = rate * _tokens_per_sample(data, model)
            else:
                metrics[names.PERF_SAMPLES] = rate
            window, window_steps, window_time, window_samples = {}, 0, 0.0, 0
            metrics.update(first_report)
            first_report = {}
            if cfg.growth.enabled and step < total_steps and should_grow(growth, metrics, cfg):
                model, optimizer = grow_model(model, optimizer, growth, cfg, step)
                metrics.update(last_event_metrics(growth, step))  # growth/* event metrics
                _attach_template(model, parallel)
                wrapped = parallel.wrap(model)
                objective.close()
                objective = TrainingObjective(cfg, model)
                if control is not None:
                    objective.telemetry_reference = control.q_ref
            metrics[names.GROWTH_STAGE] = float(growth.stage)
            architecture = architecture_of(model, architecture.arch)
            history.append(metrics)
            final = step == total_steps
            if control is not None and final and cfg.distill.enabled:
                metrics.update(control.distill(model, architecture))  # seed 004's collapse
            writer: CheckpointWriter | None = None
            if final or step % every == 0 or step == last_step:
                state = {
                    "step": step,
                    "architecture": {"arch": architecture.arch, "config": architecture.config},
                    "growth": growth.to_dict(),
                    "rng": {"torch": torch.get_rng_state(), "batches": batches.state()},
                    "run_config": cfg.to_flat(),
                    "quant_lambda": lam,  # the lam training reached (the manifest's final_lambda)
                }
                artifacts = getattr(data, "artifacts", ())  # e.g. seed 003's self-generated data
                if control is not None:  # samples, distilled_metrics.json
                    state["bit_control"] = control.state()
                    artifacts = (*artifacts, *control.artifact_files())
                writer = _writer(parallel, wrapped, optimizer, state, cfg, final, artifacts)
            if reporter is not None:
                reporter.report(dict(metrics), writer)
    finally:
        objective.close()
    return TrainResult(metrics, unwrap(wrapped), architecture, step, history)


def _start_metrics(
    model: nn.Module,
    data: TaskData,
    cfg: RunConfig,
    control: BitLMControl | None,
    device: torch.device,
) -> dict[str, float]:
    """``val/loss_start`` and the others of :data:`START_NAMES`: the model before step 1.

    The RNG states are restored afterwards, so the training that follows is that of a run
    without the evaluation. The bit LM's denoiser validates through its control (``val/loss``
    of a diffusion run comes from there, not from :func:`evaluate`).
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        measured = evaluate(model, data, cfg)
        if control is not None:
            measured.update(control.validation(model))
    return {start: measured[name] for name, start in START_NAMES.items() if name in measured}


def _initialize_step_sizes(
    model: nn.Module, cfg: RunConfig, data: TaskData, parallel: Parallel
) -> None:
    """LSQ step sizes from one calibration batch before wrapping (DDP then broadcasts rank 0's).

    The batch comes from its own generator, so the training batches stay those of any other run.
    """
    if not any(isinstance(m, LSQLayer) for m in model.modules()):
        return
    calibration = _Batches(cfg, data, cfg.train.seed + 104729, parallel.device)
    x, _ = calibration.next(model.config.seq_len if isinstance(data, ByteCorpus) else 0)
    initialize_step_sizes(model, lambda: model(x))


def _attach_template(model: nn.Module, parallel: Parallel) -> None:
    """Keep an unsharded CPU copy for FSDP exports (a plain attribute, not a submodule)."""
    if parallel.strategy == "fsdp" and parallel.world_size > 1:
        import copy

        object.__setattr__(model, "bitsweep_template", copy.deepcopy(model).cpu())


def _writer(
    parallel: Parallel,
    wrapped: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    cfg: RunConfig,
    final: bool,
    artifacts: tuple[tuple[str, Path], ...] = (),
) -> CheckpointWriter:
    def write(directory: Path) -> None:
        parallel.save(directory, wrapped, optimizer, state)
        if parallel.is_main:
            copy_artifacts(directory, artifacts)  # the tracker logs <checkpoint>/artifacts/
        if not final:
            return
        full = parallel.full_model(wrapped)
        if full is not None and any(isinstance(m, BitLinear) for m in full.modules()):
            seed = training_manifest(cfg, state["architecture"], state["step"],
                                     state.get("quant_lambda", 1.0))  # fmt: skip
            manifest = {
                **seed,
                "model_type": f"bitsweep-{state['architecture']['arch']}-{cfg.quant.scheme}",
                "architecture": state["architecture"],
            }
            save_packed_checkpoint(full, directory / PACKED_DIR, packing="base3", manifest=manifest)
            # seed 003: training_manifest.json, exactly its six fields, beside the packed weights
            write_training_manifest(directory / PACKED_DIR, seed)
            if cfg.export.formats and parallel.is_main:
                from trainables.export import export_into_checkpoint

                # into <checkpoint>/artifacts/export/<format>/, which the tracker uploads
                export_into_checkpoint(directory, cfg.export.formats, base_model=cfg.model.hf_path)

    return write
