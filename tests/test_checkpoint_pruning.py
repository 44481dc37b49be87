"""A trial the scheduler stopped for good loses its checkpoints; finished trials keep theirs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator import checkpoint_pruning as pruning


def _checkpoint(folder: Path, size: int = 1000) -> Path:
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"x" * size)
    return folder


def test_only_schedulers_that_never_resume_prune() -> None:
    assert pruning.prunes_stopped_trials("asha") and pruning.prunes_stopped_trials("optuna-sh")
    assert not pruning.prunes_stopped_trials("hyperband")  # pauses and resumes trials
    assert not pruning.prunes_stopped_trials("pbt")  # clones a stopped trial's checkpoint


def test_stopped_early_reads_the_last_step() -> None:
    assert pruning.stopped_early({"step": 20}, 60)
    assert not pruning.stopped_early({"step": 60}, 60)
    assert not pruning.stopped_early(None, 60) and not pruning.stopped_early({}, 60)


def test_the_callback_deletes_a_stopped_trials_tune_and_train_checkpoints(tmp_path: Path) -> None:
    trial_dir, train = tmp_path / "trial_a", tmp_path / "train"
    tune_ckpt = _checkpoint(trial_dir / "checkpoint_000001")
    train_ckpt = _checkpoint(train / "train-a" / "checkpoint_2026")
    other = _checkpoint(train / "train-b" / "checkpoint_2026")  # another trial's: untouched
    pruner = pruning.stopped_trial_pruner("asha", 60, str(train))
    finished = SimpleNamespace(trial_id="a", path=str(trial_dir), last_result={"step": 60})
    pruner.on_trial_complete(0, [], finished)
    assert tune_ckpt.exists() and train_ckpt.exists()  # a finished trial keeps them
    stopped = SimpleNamespace(trial_id="a", path=str(trial_dir), last_result={"step": 20})
    pruner.on_trial_complete(0, [], stopped)
    assert not tune_ckpt.exists() and not train_ckpt.exists() and other.exists()
    assert (trial_dir / "..").exists()  # the trial folder (result.json, error.txt) stays
    assert pruning.stopped_trial_pruner("pbt", 60, str(train)) is None


@pytest.mark.slow
def test_an_asha_sweep_keeps_no_checkpoint_of_a_stopped_trial(
    ray_session: Any, tmp_path: Path
) -> None:
    from orchestrator import runner
    from orchestrator.spec import load_sweep

    spec = load_sweep(
        "demo",
        ["model.d_model=32", "model.n_heads=2", "model.seq_len=32", "train.batch_size=8",
         "data.eval_batches=1", "train.steps=40", "train.eval_every=10",
         "search.num_samples=8", "resources.max_concurrent_trials=1",
         "search.scheduler.type=asha", "search.scheduler.grace_period=1",
         f"storage.path={tmp_path / 'results'}",
         f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"],
        notify=None,
    )  # fmt: skip
    outcome = runner.run_sweep(spec, stream=None)
    assert outcome.failed == 0
    status = dict(zip(outcome.trials["trial_id"], outcome.trials["status"], strict=True))
    stopped = [t for t, s in status.items() if s == "stopped_early"]
    assert stopped, status  # 8 trials one at a time under ASHA: some stop
    for trial_id, state in status.items():
        kept = list(Path(outcome.experiment_path).glob(f"trial_{trial_id}/checkpoint_*"))
        if state == "stopped_early":
            assert not kept, (trial_id, kept)
        else:
            assert 1 <= len(kept) <= 2, (trial_id, kept)
