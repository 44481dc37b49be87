"""The Tune callbacks' reading of a trial (who PBT cloned it from) and the trimming of an ended
trial (issue 17: the driver's memory stays flat over long sweeps)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator.tune_callbacks import (
    EndedTrialTrimmer,
    exploited_from,
    forget_encoder_fallbacks,
    trim_ended_trial,
)


def _trial(trial_id: str, checkpoint_metrics: dict | None) -> SimpleNamespace:
    restoring = None if checkpoint_metrics is None else SimpleNamespace(metrics=checkpoint_metrics)
    return SimpleNamespace(trial_id=trial_id, latest_checkpoint_result=restoring)


def test_a_trial_restarted_from_a_donors_checkpoint_names_the_donor() -> None:
    assert exploited_from(_trial("t1", {"trial_id": "t3", "step": 12})) == "t3"


def test_a_trial_restored_from_its_own_checkpoint_or_none_names_no_donor() -> None:
    assert exploited_from(_trial("t1", {"trial_id": "t1", "step": 12})) is None
    assert exploited_from(_trial("t1", None)) is None
    assert exploited_from(_trial("t1", {})) is None


# ---- trimming an ended trial --------------------------------------------------------------------

EXTRA = [f"extra/m{i}" for i in range(12)]  # metrics only MLflow needs


def _result(step: int) -> dict[str, Any]:
    return {
        "val/loss": 1 / step, **{name: float(step) for name in EXTRA}, "step": step,
        "training_iteration": step, "time_total_s": float(step), "trial_id": "t1",
        "config": {"run_config": {"train.lr": 0.1}}, "done": False,
    }  # fmt: skip


def test_an_ended_trial_keeps_only_what_resume_and_the_summary_read(tmp_path: Path) -> None:
    """A real Tune Trial after three results and checkpoints: the per-metric statistics, the
    last result and the checkpoints' results keep the objective and Tune's counters; the JSON
    Tune saves shrinks, and the trial restored from it goes on like a resumed errored trial."""
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune import Checkpoint, CheckpointConfig
    from ray.tune.experiment import Trial

    storage = StorageContext(str(tmp_path), experiment_dir_name="exp", trial_dir_name="t1")
    trial = Trial(
        "fake", config={"run_config": {"train.lr": 0.1}}, trial_id="t1", storage=storage,
        stub=True, checkpoint_config=CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute="val/loss", checkpoint_score_order="min"),
    )  # fmt: skip
    trial.create_placement_group_factory()
    for step in (1, 2, 3):
        trial.update_last_result(_result(step))
        folder = tmp_path / f"checkpoint_{step}"
        folder.mkdir()
        manager = trial.run_metadata.checkpoint_manager
        manager.register_checkpoint(_TrainingResult(Checkpoint(str(folder)), _result(step)))
    assert set(trial.metric_analysis) >= {"val/loss", *EXTRA}
    _, metadata_before = trial.get_json_state()

    EndedTrialTrimmer(["val/loss"]).on_trial_complete(0, [trial], trial)

    assert set(trial.metric_analysis) == set(trial.metric_n_steps) == {"val/loss"}
    assert trial.metric_analysis["val/loss"]["min"] == pytest.approx(1 / 3)
    last = trial.last_result
    assert last["step"] == 3 and last["val/loss"] == pytest.approx(1 / 3)
    assert (last["training_iteration"], last["time_total_s"], last["trial_id"]) == (3, 3.0, "t1")
    assert "config" not in last and not set(EXTRA) & set(last)
    assert trial.checkpoint.path == str(tmp_path / "checkpoint_3")  # what resume restarts from
    restoring_from = trial.latest_checkpoint_result.metrics
    assert restoring_from["training_iteration"] == 3 and restoring_from["trial_id"] == "t1"
    assert not set(EXTRA) & set(restoring_from)
    state, metadata = trial.get_json_state()
    assert len(metadata) < len(metadata_before) / 2  # the cached JSON was rebuilt, trimmed

    restored = Trial.from_json_state(state, stub=True)  # what Tuner.restore builds
    restored.restore_run_metadata(metadata)
    assert restored.checkpoint.path == trial.checkpoint.path
    assert restored.last_result["step"] == 3
    restored.update_last_result(_result(4))  # an errored trial resumed: statistics go on
    assert restored.metric_analysis["val/loss"]["last"] == pytest.approx(1 / 4)
    assert restored.metric_analysis["extra/m0"]["last"] == 4.0


def test_a_trial_that_never_reported_is_left_as_it_was() -> None:
    from ray.tune.experiment import Trial

    trial = Trial("fake", trial_id="t2", stub=True)
    trim_ended_trial(trial, ["val/loss"])
    assert trial.last_result == {"trial_id": "t2"}
    assert trial.metric_analysis == {} and trial.checkpoint is None


def test_the_state_encoders_log_once_keys_are_forgotten() -> None:
    """Tune's JSON encoder leaves a ``log_once`` key per deque it encodes; other keys stay."""
    import json
    from collections import deque

    from ray.tune.utils.serialization import TuneFunctionEncoder
    from ray.util import debug

    debug.log_once("some other warning")
    json.dumps({"window": deque([0.125, 0.25], maxlen=5)}, cls=TuneFunctionEncoder)
    assert "tune_func_encode:deque([0.125, 0.25], maxlen=5)" in debug._logged
    assert forget_encoder_fallbacks() >= 1
    assert not [key for key in debug._logged if key.startswith("tune_func_encode:")]
    assert "some other warning" in debug._logged
    debug.reset_log_once("some other warning")


def reporting_trainable(config: dict[str, Any]) -> None:
    """Reports ``val/loss`` and a dozen other metrics with a checkpoint at each of 3 steps; the
    trial with x == 2 fails at step 2 while ``fail_flag`` exists. A trial restored from a
    checkpoint appends the checkpoint's step to ``restored_log``."""
    import tempfile

    from ray import tune

    start = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = int((Path(folder) / "step").read_text()) + 1
        with open(config["restored_log"], "a") as log:
            log.write(f"{config['x']}:{start - 1}\n")
    for step in range(start, 4):
        if config["x"] == 2 and step == 2 and os.path.exists(config["fail_flag"]):
            raise ValueError("boom")
        metrics = {"val/loss": config["x"] + 1 / step, "step": step}
        metrics.update({name: float(step) for name in EXTRA})
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "step").write_text(str(step))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


@pytest.mark.slow
def test_a_trimmed_sweep_resumes_its_errored_trial_from_its_checkpoint(
    ray_session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real sweep with the trimmer (and without Tune's log files, as the runner runs it): both
    ended trials lose their per-metric bookkeeping, the state Tune saved is the trimmed one, and
    a resume restarts the failed trial from its step-1 checkpoint, to the end."""
    import ray
    from ray import tune
    from ray.tune import ExperimentAnalysis

    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack tests/
    flag, restored_log = tmp_path / "fail", tmp_path / "restored.txt"
    flag.write_text("fail while this file exists")
    trainable = tune.with_resources(reporting_trainable, {"cpu": 0, "trial_slot": 1})
    space = {
        "x": tune.grid_search([1, 2]),
        "fail_flag": str(flag),
        "restored_log": str(restored_log),
    }
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(
            name="trimmed",
            storage_path=str(tmp_path / "ray"),
            verbose=0,
            callbacks=[EndedTrialTrimmer(["val/loss"])],
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="val/loss", checkpoint_score_order="min"
            ),
        ),
    )
    grid = tuner.fit()
    trials = {t.config["x"]: t for t in grid._experiment_analysis.trials}
    assert (trials[1].status, trials[2].status) == ("TERMINATED", "ERROR")
    for trial in trials.values():
        assert set(trial.metric_analysis) == set(trial.metric_n_steps) == {"val/loss"}
        assert not set(EXTRA) & set(trial.last_result) and "config" not in trial.last_result
    assert trials[1].last_result["step"] == 3 and trials[2].last_result["step"] == 1
    saved = {t.config["x"]: t for t in ExperimentAnalysis(str(tmp_path / "ray" / "trimmed")).trials}
    assert set(saved[1].metric_analysis) == {"val/loss"} and "extra/m0" not in saved[1].last_result

    flag.unlink()
    resumed = tune.Tuner.restore(
        str(tmp_path / "ray" / "trimmed"), trainable=trainable, resume_errored=True
    ).fit()
    trials = {t.config["x"]: t for t in resumed._experiment_analysis.trials}
    assert (trials[1].status, trials[2].status) == ("TERMINATED", "TERMINATED")
    assert restored_log.read_text() == "2:1\n"  # only the failed trial, from its checkpoint
    assert trials[2].last_result["step"] == 3 and trials[2].last_result["training_iteration"] == 3
    assert set(trials[2].metric_analysis) == {"val/loss"}
