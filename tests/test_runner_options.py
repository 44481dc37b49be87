"""The runner's Tune options: concurrency limits, actor reuse, and what a reused actor must keep."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator import runner
from orchestrator.spec import load_sweep

FIXED = ["search.space.train.lr=null", "search.space.quant.scheme=null",
         "search.space.schedule.lambda_warmup_frac=null", "search.algorithm=random",
         "search.scheduler.type=none"]  # fmt: skip
LM_TINY = ["model.d_model=32", "model.n_heads=2", "model.seq_len=32", "train.batch_size=8",
           "data.eval_batches=1"]  # fmt: skip


@pytest.mark.parametrize("algorithm", ["random", "grid"])
def test_generators_respect_max_concurrent_trials(algorithm: str) -> None:
    # Tune applies max_concurrent_trials only to Searchers, not to a BasicVariantGenerator.
    spec = load_sweep(
        "demo",
        [*FIXED, f"search.algorithm={algorithm}", "resources.max_concurrent_trials=1"],
    )
    assert runner._search_algorithm(spec).max_concurrent == 1


def test_only_one_process_trials_reuse_actors() -> None:
    assert runner._reuse_actors(load_sweep("demo", FIXED))
    ddp = load_sweep("demo", [*FIXED, "resources.workers_per_trial=2", "resources.strategy=ddp"])
    assert not runner._reuse_actors(ddp)


@pytest.mark.slow
def test_reused_trial_process_trains_like_a_fresh_one(
    ray_session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three identical trials in one reused actor give the plain loop's metrics exactly."""
    import torch

    from trainables.loop import train

    # Tune's result.json files (off in a sweep unless asked for) carry each result's pid
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")

    spec = load_sweep(
        "demo",
        [*FIXED, *LM_TINY, "train.steps=8", "train.eval_every=4", "search.num_samples=3",
         "resources.max_concurrent_trials=1", f"storage.path={tmp_path / 'results'}",
         f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"],
    )  # fmt: skip
    outcome = runner.run_sweep(spec, stream=None)
    assert outcome.failed == 0 and len(outcome.trials) == 3
    pids = set()
    for result_file in Path(outcome.experiment_path).glob("trial_*/result.json"):
        pids |= {json.loads(line)["pid"] for line in result_file.read_text().splitlines()}
    assert len(pids) == 1, "the trials did not share one reused actor"
    threads = torch.get_num_threads()
    try:
        expected = train(spec.run).metrics
    finally:
        torch.set_num_threads(threads)
    for name in ("val/bpb", "train/loss", "model/bits_total"):
        assert list(outcome.trials[name]) == [expected[name]] * 3, name


def test_trials_keep_their_latest_and_best_checkpoints_only() -> None:
    """``storage.keep_checkpoints`` reaches both Tune (one-process trials) and the Train run of a
    multi-worker trial; PBT keeps every checkpoint (it clones a donor's later)."""
    spec = load_sweep("demo", [*FIXED, "storage.keep_checkpoints=2"])
    tune_config = runner._checkpoint_config(spec)
    assert tune_config.num_to_keep == 2 and tune_config.checkpoint_score_attribute == "val/bpb"
    settings = runner._param_space(spec)[runner.TRIAL_SETTINGS_KEY]
    assert (settings.keep_checkpoints, settings.score_metric, settings.score_mode) == (
        2, "val/bpb", "min"
    )  # fmt: skip
    pbt = load_sweep("demo", ["search.algorithm=random", "search.scheduler.type=pbt",
                              "search.space.quant.scheme=null"])  # fmt: skip
    assert runner._checkpoint_config(pbt).num_to_keep is None
    assert runner._param_space(pbt)[runner.TRIAL_SETTINGS_KEY].keep_checkpoints is None


@pytest.mark.slow
def test_a_multi_worker_trial_prunes_its_train_checkpoints(
    ray_session: Any, tmp_path: Path
) -> None:
    """Six evaluations of a 2-worker DDP trial write six Train checkpoints; the latest and the
    best one stay on disk (the default ``storage.keep_checkpoints=1``)."""
    spec = load_sweep(
        "demo",
        [*FIXED, *LM_TINY, "train.steps=60", "train.eval_every=10", "search.num_samples=1",
         "resources.workers_per_trial=2", "resources.strategy=ddp",
         f"storage.path={tmp_path / 'results'}",
         f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"],
    )  # fmt: skip
    outcome = runner.run_sweep(spec, stream=None)
    assert outcome.failed == 0 and len(outcome.trials) == 1
    train_runs = list((Path(outcome.experiment_path) / "train").glob("train-*"))
    assert len(train_runs) == 1, train_runs
    kept = sorted(p.name for p in train_runs[0].glob("checkpoint_*"))
    assert 1 <= len(kept) <= 2, kept


def test_the_sweep_trims_ended_trials_last(tmp_path: Path) -> None:
    """The trimmer keeps the objectives and comes after every callback that reads a whole
    last result (the MLflow callback, the pruner, the progress view) in the same hook."""
    import io

    from orchestrator.tune_callbacks import EndedTrialTrimmer

    spec = load_sweep("demo", [*FIXED, f"storage.path={tmp_path}"])
    callbacks = runner._callbacks(spec, tracker=None, stream=io.StringIO())
    assert isinstance(callbacks[-1], EndedTrialTrimmer)
    assert callbacks[-1].metrics == tuple(o.metric for o in spec.search.objective_list)


def test_tune_log_files_are_off_for_the_fit_only(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
    monkeypatch.delenv(key, raising=False)
    with runner._no_tune_trial_logs():
        assert os.environ[key] == "1"
    assert key not in os.environ  # a caller's own Tune runs afterwards keep Tune's default
    monkeypatch.setenv(key, "0")  # asked for: kept
    with runner._no_tune_trial_logs():
        assert os.environ[key] == "0"
