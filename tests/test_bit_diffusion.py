"""Diffusion mode of the bit LM (seed 004): schedules, corruption, parity correction, sampler."""

from __future__ import annotations

import math
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from trainables.config import ConfigError, RunConfig
from trainables.data.bits import bits_to_bytes, bytes_to_bits
from trainables.data.bytes import pydocs_bytes
from trainables.loop import train
from trainables.models.bit_diffusion import (
    IGNORE,
    MASK,
    bits_to_text,
    corrupt,
    denoising_batch,
    diffusion_sample,
    draw_times,
    enforce_parity,
    noise_level,
)
from trainables.models.bit_lm import MASK_TOKEN, BitLM
from trainables.models.bit_lm_config import BitLMConfig
from trainables.reporting import ListReporter

SCHEDULES = ("linear", "cosine", "exp")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_endpoints_and_monotone(schedule: str) -> None:
    t = torch.linspace(0, 1, 101)
    level = noise_level(t, schedule)  # type: ignore[arg-type]
    assert float(level[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(level[-1]) == pytest.approx(1.0, abs=1e-6)
    assert bool((level[1:] > level[:-1]).all())


@settings(max_examples=50, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1), st.sampled_from(SCHEDULES))
def test_schedules_are_monotone_in_time(a: float, b: float, schedule: str) -> None:
    lo, hi = sorted((a, b))
    assert float(noise_level(lo, schedule)) <= float(noise_level(hi, schedule)) + 1e-7


def test_schedules_differ_as_documented() -> None:
    # cosine adds little noise early; exp even less until late; linear is the diagonal
    assert float(noise_level(0.25, "cosine")) < 0.25 < 0.5 < float(noise_level(0.75, "cosine"))
    assert float(noise_level(0.5, "exp")) == pytest.approx(math.expm1(2.5) / math.expm1(5))
    with pytest.raises(ValueError, match=r"diffusion\.schedule"):
        noise_level(0.5, "square")  # type: ignore[arg-type]


@pytest.mark.parametrize("noise", ["mask", "flip"])
@pytest.mark.parametrize("level", [0.1, 0.5, 0.9])
def test_corruption_rate_matches_level(noise: str, level: float) -> None:
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (64, 576), generator=g)
    inputs, corrupted = corrupt(bits, level, noise, g)  # type: ignore[arg-type]
    assert float(corrupted.float().mean()) == pytest.approx(level, abs=0.01)
    assert torch.equal(inputs[~corrupted], bits[~corrupted])  # the rest is untouched
    if noise == "mask":
        assert bool((inputs[corrupted] == MASK).all())
    else:
        assert set(inputs.unique().tolist()) <= {0, 1}
        # resampled by a fair coin: half of the corrupted bits change
        changed = (inputs[corrupted] != bits[corrupted]).float().mean()
        assert float(changed) == pytest.approx(0.5, abs=0.03)


def test_every_row_gets_a_loss_and_per_row_levels() -> None:
    g = torch.Generator().manual_seed(1)
    bits = torch.randint(0, 2, (3, 900), generator=g)
    _, corrupted = corrupt(bits, torch.tensor([0.0, 0.2, 0.8]), "mask", g)
    rates = corrupted.float().mean(dim=1)
    assert int(corrupted[0].sum()) == 1  # level 0 still scores one bit
    assert float(rates[1]) == pytest.approx(0.2, abs=0.05)
    assert float(rates[2]) == pytest.approx(0.8, abs=0.05)


def test_denoising_targets_score_only_corrupted_positions() -> None:
    g = torch.Generator().manual_seed(2)
    bits = torch.randint(0, 2, (8, 90), generator=g)
    inputs, targets = denoising_batch(bits, schedule="linear", noise="mask", generator=g)
    scored = targets != IGNORE
    assert torch.equal(scored, inputs == MASK)
    assert torch.equal(targets[scored], bits[scored])
    assert MASK == MASK_TOKEN  # the model's masked-bit input id


def test_curriculum_goes_from_high_to_low_noise() -> None:
    g = torch.Generator().manual_seed(3)
    early = draw_times(4000, g, progress=0.0)
    late = draw_times(4000, g, progress=1.0)
    uniform = draw_times(4000, g)
    assert float(early.mean()) > 0.75 > 0.5 > float(late.mean())
    assert float(uniform.mean()) == pytest.approx(0.5, abs=0.03)
    # the random-noise fallback keeps some high-noise samples at the end
    assert float((late > 0.5).float().mean()) > 0.05


def test_parity_correction_fixes_exactly_the_wrong_bytes() -> None:
    g = torch.Generator().manual_seed(4)
    data = torch.randint(0, 256, (5, 40), generator=g)
    bits = bytes_to_bits(data)  # [5, 360]
    broken = bits.clone().view(5, 40, 9)
    wrong = torch.rand(5, 40, generator=g) < 0.3
    where_parity = torch.rand(5, 40, generator=g) < 0.5
    # break some bytes by their parity bit, others by a data bit (its byte then changes)
    broken[..., 8] ^= (wrong & where_parity).long()
    broken[..., 3] ^= (wrong & ~where_parity).long()
    broken = broken.view(5, 360)
    fixed, fixes = enforce_parity(broken)
    assert fixes == int(wrong.sum())
    values, ok = bits_to_bytes(fixed)
    assert bool(ok.all())
    assert torch.equal(values, bits_to_bytes(broken)[0])  # data bits are never touched
    assert enforce_parity(bits)[1] == 0
    with pytest.raises(ValueError, match="9-bit"):
        enforce_parity(torch.zeros(10, dtype=torch.long))


def _oracle(target: torch.Tensor, calls: list[int]) -> object:
    """A perfect denoiser of ``target`` [B, T]: confident logits for the target bits."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.nn.functional.one_hot(target, 2).float() * 8.0 - 4.0

    return predict


@pytest.mark.parametrize("noise", ["mask", "flip"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_sampler_denoises_to_what_the_model_knows(noise: str, schedule: str) -> None:
    text = b"bits!"
    target = bytes_to_bits(torch.tensor(list(text))).unsqueeze(0).repeat(2, 1)
    calls: list[int] = []
    bits, fixes = diffusion_sample(
        _oracle(target, calls), len(text), steps=12, schedule=schedule, noise=noise,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(5), batch=2,
    )  # fmt: skip
    assert len(calls) <= 12
    assert fixes == 0
    assert torch.equal(bits, target)
    assert bits_to_text(bits[0]) == text


@pytest.mark.parametrize("noise", ["mask", "flip"])
def test_sampler_of_a_real_model_returns_valid_bytes(noise: str) -> None:
    torch.manual_seed(0)
    model = BitLM(BitLMConfig(d_model=16, n_layers=1, n_heads=2, seq_len=72, causal=False))
    model.eval()
    bits, fixes = diffusion_sample(
        lambda x: model(x).logits, 8, steps=8, schedule="cosine", noise=noise,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(6), batch=3,
    )  # fmt: skip
    assert bits.shape == (3, 72)
    assert set(bits.unique().tolist()) <= {0, 1}  # no MASK left
    assert bool(bits_to_bytes(bits)[1].all())  # every parity bit is right
    assert 0 <= fixes <= 24


def test_denoiser_learns_to_fill_masked_bits() -> None:
    """Trained on pydocs, the non-causal model beats chance on masked bits (parity, context)."""
    torch.manual_seed(0)
    text = torch.tensor(list(pydocs_bytes()[:20000]))
    model = BitLM(BitLMConfig(d_model=32, n_layers=2, n_heads=2, seq_len=72, causal=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(7)

    def batch() -> torch.Tensor:
        starts = torch.randint(0, text.numel() - 8, (16,), generator=g)
        return bytes_to_bits(torch.stack([text[s : s + 8] for s in starts.tolist()]))

    def masked_loss() -> float:
        with torch.no_grad():
            eval_g = torch.Generator().manual_seed(8)
            clean = bytes_to_bits(text[: 16 * 8].view(16, 8))
            inputs, corrupted = corrupt(clean, 0.3, "mask", eval_g)
            targets = torch.where(corrupted, clean, torch.full_like(clean, IGNORE))
            return float(model(inputs, targets=targets).task_loss)

    before = masked_loss()
    for _ in range(150):
        inputs, targets = denoising_batch(batch(), schedule="cosine", noise="mask", generator=g)
        loss = model(inputs, targets=targets).task_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = masked_loss()
    assert before == pytest.approx(math.log(2), abs=0.1)
    assert after < 0.6  # well below the ln 2 = 0.693 of a coin


TINY = {
    "model.arch": "bit_lm", "model.seq_len": 72, "model.d_model": 32, "model.n_heads": 2,
    "model.n_layers": 2, "model.causal": False, "train.steps": 60, "train.eval_every": 30,
    "train.batch_size": 16, "data.max_bytes": 20000, "data.eval_batches": 1,
    "train.device": "cpu", "telemetry.gen_bytes": 8, "quant.scheme": "ternary",
}  # fmt: skip


def test_diffusion_mode_trains_and_reports_through_the_loop(tmp_path: Path) -> None:
    cfg = RunConfig().with_overrides(
        {**TINY, "diffusion.schedule": "cosine", "diffusion.curriculum": True}
    )
    reporter = ListReporter(tmp_path)
    train(cfg, reporter=reporter)
    first, last = reporter.metrics
    assert last["val/loss"] < first["val/loss"] < math.log(2) + 0.05  # the denoiser learns
    assert last["val/bpb"] < 9.5  # the ELBO bound, bits per byte
    assert 0 <= last["diffusion/parity_fixes"] <= 2 * 8
    assert last["val/parity_error"] == pytest.approx(last["diffusion/parity_fixes"] / 16)
    for name in ("telemetry/K", "telemetry/C", "telemetry/S"):
        assert 0.0 <= last[name] <= 1.0
    samples = (reporter.checkpoints[-1] / "artifacts" / "diffusion_samples.txt").read_text()
    assert "--- step 60" in samples


def test_eval_at_start_reports_the_untrained_denoisers_validation() -> None:
    """A diffusion run's val/loss comes from its control, not evaluate(): so does the start's."""
    from trainables.bit_control import BitLMControl
    from trainables.build import build_model, initial_architecture, load_task_data

    cfg = RunConfig().with_overrides(
        {**TINY, "train.steps": 2, "train.eval_every": 2, "train.eval_at_start": True}
    )
    reporter = ListReporter()
    train(cfg, reporter=reporter)
    (first,) = reporter.metrics
    data = load_task_data(cfg)
    torch.manual_seed(cfg.train.seed)
    untrained = build_model(cfg, initial_architecture(cfg, data))
    expected = BitLMControl(cfg, data).validation(untrained)
    assert set(expected) == {"val/loss", "val/bpb"}  # mask noise: the ELBO bound too
    assert first["val/loss_start"] == pytest.approx(expected["val/loss"], rel=1e-6)
    assert first["val/bpb_start"] == pytest.approx(expected["val/bpb"], rel=1e-6)


def test_diffusion_keys_need_the_non_causal_bit_lm() -> None:
    with pytest.raises(ConfigError, match=r"diffusion\.noise need model\.causal: false"):
        RunConfig().with_overrides({**TINY, "model.causal": True, "diffusion.noise": "flip"})
    with pytest.raises(ConfigError, match=r"diffusion\.schedule need model\.arch 'bit_lm'"):
        RunConfig().with_overrides({"diffusion.schedule": "exp"})
    with pytest.raises(ConfigError, match=r"diffusion\.steps"):
        RunConfig().with_overrides({**TINY, "diffusion.steps": 4})
    with pytest.raises(ConfigError, match=r"model\.causal"):
        RunConfig().with_overrides({"model.causal": False})  # byte_lm has no diffusion mode


SWEEP = """
name: bit-diffusion-e2e
description: "Tiny diffusion-mode bit LM with telemetry, through Tune and MLflow"
task: {kind: lm}
data: {source: pydocs, max_bytes: 20000, eval_batches: 1}
model: {arch: bit_lm, d_model: 16, n_layers: 1, n_heads: 2, seq_len: 72, causal: false}
quant: {scheme: ternary}
diffusion: {noise: mask, schedule: cosine, steps: 8}
telemetry: {gen_bytes: 4}
loss: {lambda_S: 0.1}
train: {steps: 8, batch_size: 4, eval_every: 4, threads: 1}
search:
  algorithm: random
  num_samples: 1
  metric: telemetry/C
  mode: max
  space:
    loss.lambda_K: {dist: choice, values: [0.0, 0.1]}
resources: {workers_per_trial: 1, cpus_per_worker: 1}
"""


@pytest.mark.slow
def test_diffusion_sweep_logs_telemetry_to_mlflow(
    mlflow_server: str, ray_session: object, tmp_path: Path
) -> None:
    """A sweep file through the real runner: telemetry and diffusion metrics and the samples."""
    from mlflow import MlflowClient

    from orchestrator.runner import run_sweep
    from orchestrator.spec import load_sweep

    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP)
    where = [f"tracking.uri={mlflow_server}", "tracking.experiment=bit-diffusion",
             f"storage.path={tmp_path / 'storage'}"]  # fmt: skip
    outcome = run_sweep(load_sweep(str(path), where), stream=None)
    assert outcome.failed == 0 and len(outcome.trials) == 1
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("bit-diffusion")
    (child,) = [r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("bitsweep.role") == "trial"]  # fmt: skip
    metrics = child.data.metrics
    for name in ("telemetry/K", "telemetry/C", "telemetry/S", "telemetry/refused",
                 "diffusion/parity_fixes", "val/parity_error", "val/bpb", "loss/S"):  # fmt: skip
        assert name in metrics, name
    assert [m.step for m in client.get_metric_history(child.info.run_id, "telemetry/C")] == [4, 8]
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert "diffusion_samples.txt" in artifacts
