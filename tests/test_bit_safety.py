"""The bit LM's safety gate (seed 004): floors, soft retries, refusals, metric drift, halting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainables.config import ConfigError, RunConfig
from trainables.loop import train
from trainables.models.bit_safety import detect_drift, safe_generate
from trainables.models.bit_telemetry import pattern_distribution
from trainables.reporting import ListReporter
from trainables.telemetry_events import events_from_history

CODED = torch.randint(0, 2, (1, 4096), generator=torch.Generator().manual_seed(0))
Q_REF = pattern_distribution(CODED.float(), 4)
TINY = {
    "model.arch": "bit_lm", "model.seq_len": 72, "model.d_model": 32, "model.n_heads": 2,
    "model.n_layers": 1, "train.steps": 20, "train.eval_every": 10, "train.batch_size": 8,
    "data.max_bytes": 20000, "data.eval_batches": 1, "train.device": "cpu",
    "telemetry.gen_bytes": 8,
}  # fmt: skip


def _sampler(degenerate_seeds: set[int], calls: list[int]) -> object:
    def sample(seed: int) -> torch.Tensor:
        calls.append(seed)
        if seed in degenerate_seeds:
            return torch.zeros(2, 144, dtype=torch.long)  # C ~ 0.1, S ~ 0: breaks both floors
        return torch.randint(0, 2, (2, 144), generator=torch.Generator().manual_seed(seed))

    return sample


def test_gate_passes_good_generations_at_once() -> None:
    calls: list[int] = []
    gate = safe_generate(_sampler(set(), calls), q_ref=Q_REF, floor_C=0.3, floor_S=0.5, seed=7)
    assert gate.passed and gate.refused == 0 and calls == [7]
    assert gate.C >= 0.3 and gate.S >= 0.5


def test_gate_retries_refused_generations_with_new_seeds() -> None:
    calls: list[int] = []
    gate = safe_generate(_sampler({7, 8}, calls), q_ref=Q_REF, floor_C=0.3, floor_S=0.5, seed=7)
    assert calls == [7, 8, 9]
    assert gate.passed and gate.refused == 2
    assert [a["passed"] for a in gate.attempts] == [False, False, True]
    assert bool(gate.bits.any())  # the passing sample is returned, not the degenerate one


def test_gate_uses_the_fallback_sampler_for_retries() -> None:
    primary: list[int] = []
    fallback: list[int] = []
    gate = safe_generate(
        _sampler({0}, primary), q_ref=Q_REF, floor_C=0.3, floor_S=0.5,
        fallback=_sampler(set(), fallback),
    )  # fmt: skip
    assert primary == [0] and fallback == [1]
    assert gate.passed and gate.attempts[1]["sampler"] == "fallback"


def test_gate_gives_up_after_three_retries_without_crashing() -> None:
    calls: list[int] = []
    gate = safe_generate(_sampler(set(range(10)), calls), q_ref=Q_REF, floor_C=0.3, floor_S=0.5)
    assert len(calls) == 4  # the first attempt and 3 retries
    assert not gate.passed and gate.refused == 4


def test_drift_detection() -> None:
    history = [{"telemetry/K": 0.1}, {"telemetry/K": 0.2}, {"telemetry/K": 0.35}]
    assert detect_drift(history, ["telemetry/K"], window=3, thresh=0.2) == {
        "telemetry/K": pytest.approx(0.25)
    }
    assert detect_drift(history, ["telemetry/K"], window=2, thresh=0.2) == {}
    assert detect_drift(history[:2], ["telemetry/K"], window=3, thresh=0.01) == {}


def test_refusals_are_counted_over_the_run(tmp_path: Path) -> None:
    # floors nobody meets: every generation is refused, 1 + 3 retries per evaluation
    cfg = RunConfig().with_overrides({
        **TINY, "telemetry.floor_C": 1.0, "telemetry.floor_S": 1.0, "telemetry.gen_bytes": 3,
    })  # fmt: skip
    reporter = ListReporter(tmp_path)
    train(cfg, reporter=reporter)
    assert [m["telemetry/refused"] for m in reporter.metrics] == [4.0, 8.0]
    assert [m["telemetry/gate_passed"] for m in reporter.metrics] == [0.0, 0.0]
    samples = (reporter.checkpoints[-1] / "artifacts" / "samples.txt").read_text()
    assert "refused 4x" in samples


def test_gate_refuses_the_generations_of_a_collapsed_model() -> None:
    """A strong negentropy weight makes the model overconfident; the gate catches its output."""
    settings = {**TINY, "train.steps": 30, "train.eval_every": 30, "telemetry.floor_S": 0.7,
                "telemetry.gen_bytes": 4}  # fmt: skip
    healthy, collapsed = ListReporter(), ListReporter()
    train(RunConfig().with_overrides(settings), reporter=healthy)
    train(RunConfig().with_overrides({**settings, "loss.lambda_K": 2.0}), reporter=collapsed)
    assert healthy.last["telemetry/refused"] == 0.0 and healthy.last["telemetry/gate_passed"] == 1
    assert collapsed.last["telemetry/K"] > healthy.last["telemetry/K"] + 0.3
    assert collapsed.last["telemetry/refused"] > 0.0
    assert collapsed.last["telemetry/S_gen"] < healthy.last["telemetry/S_gen"]


def test_refusal_count_and_drift_history_survive_a_resume(tmp_path: Path) -> None:
    cfg = RunConfig().with_overrides({
        **TINY, "telemetry.floor_C": 1.0, "telemetry.floor_S": 1.0, "telemetry.gen_bytes": 3,
        "telemetry.retries": 1, "telemetry.drift_window": 2, "telemetry.drift_thresh": 1e-4,
    })  # fmt: skip
    first = ListReporter(tmp_path / "a")
    train(cfg, reporter=first, stop_after=10)
    assert first.last["telemetry/refused"] == 2.0
    resumed = ListReporter(tmp_path / "b")
    train(cfg, reporter=resumed, resume_from=first.checkpoints[-1])
    assert resumed.last["telemetry/refused"] == 4.0  # counted over the whole run
    assert resumed.last["telemetry/drift_events"] == 1.0  # the window spans the resume


def test_drift_halts_the_run_with_a_reason(tmp_path: Path) -> None:
    cfg = RunConfig().with_overrides({
        **TINY, "train.steps": 60, "telemetry.drift_window": 2, "telemetry.drift_thresh": 1e-4,
        "telemetry.halt_on_drift": True,
    })  # fmt: skip
    reporter = ListReporter(tmp_path)
    result = train(cfg, reporter=reporter)
    assert result.step == 20  # the second evaluation sees the drift and stops the run
    last = reporter.last
    assert last["telemetry/halted"] == 1.0 and last["telemetry/drift"] >= 1
    assert reporter.checkpoints[-1].name.endswith("20")  # a checkpoint with the artifacts
    history = {k: {int(m["step"]): m[k] for m in reporter.metrics if k in m} for k in last}
    events = events_from_history(history)
    assert len(events) == 1 and events[0]["halted"] and events[0]["step"] == 20


def test_drift_without_halt_is_logged_and_training_goes_on(tmp_path: Path) -> None:
    cfg = RunConfig().with_overrides({
        **TINY, "train.steps": 30, "telemetry.drift_window": 2, "telemetry.drift_thresh": 1e-4,
    })  # fmt: skip
    reporter = ListReporter(tmp_path)
    assert train(cfg, reporter=reporter).step == 30
    assert reporter.last["telemetry/drift_events"] == 2.0
    assert "telemetry/halted" not in reporter.last


def test_telemetry_keys_need_the_bit_lm() -> None:
    with pytest.raises(ConfigError, match=r"telemetry\.halt_on_drift need model\.arch 'bit_lm'"):
        RunConfig().with_overrides({"telemetry.halt_on_drift": True})
    with pytest.raises(ConfigError, match=r"loss\.lambda_C"):
        RunConfig().with_overrides({"loss.lambda_C": 0.1})
    with pytest.raises(ConfigError, match=r"telemetry\.floor_S"):
        RunConfig().with_overrides({**TINY, "telemetry.floor_S": 1.5})


@pytest.mark.slow
def test_halted_trial_in_mlflow_has_its_reason_events_and_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tracker (driver side) turns the loop's reports into events, a reason and artifacts."""
    from mlflow import MlflowClient

    from orchestrator.run_layout import STOPPED_EARLY
    from orchestrator.tracking import SweepTracker

    cfg = RunConfig().with_overrides({
        **TINY, "train.steps": 60, "telemetry.drift_window": 2, "telemetry.drift_thresh": 1e-4,
        "telemetry.halt_on_drift": True,
    })  # fmt: skip
    reporter = ListReporter(tmp_path / "ckpt")
    train(cfg, reporter=reporter)
    monkeypatch.chdir(tmp_path)
    tracker = SweepTracker("drift", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.start()
    tracker.trial_started("t0", cfg.to_flat())
    for metrics in reporter.metrics:
        tracker.log_result("t0", {**metrics, "training_iteration": int(metrics["step"])})
    tracker.set_checkpoint("t0", str(reporter.checkpoints[-1]))
    assert tracker.trial_finished("t0") == STOPPED_EARLY
    client = MlflowClient(tracker.uri)
    run_id = tracker._trial("t0").run_id
    run = client.get_run(run_id)
    reason = run.data.tags["bitsweep.stop_reason"]
    assert reason.startswith("step 20: metric drift: telemetry/") and "halt_on_drift" in reason
    assert "over the last 2 evaluations (threshold 0.0001)" in reason
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"telemetry_events.json", "samples.txt"} <= names
    events = json.loads(Path(client.download_artifacts(run_id, "telemetry_events.json",
                                                       str(tmp_path))).read_text())  # fmt: skip
    assert [e["step"] for e in events] == [20] and events[0]["halted"]
    assert run.data.metrics["telemetry/halted"] == 1.0
