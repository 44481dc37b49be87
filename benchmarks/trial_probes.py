"""Timestamps from inside Tune trials and Ray Train workers, for the orchestration benchmark.

The benchmark swaps these wrappers in for :func:`orchestrator.trials.single_process_trial` and
:func:`orchestrator.trials.distributed_trial` (in its own driver process only). They run the real
trial functions unchanged and append events (wall-clock ``time.time()``, comparable across the
processes of one machine) to ``$BITSWEEP_BENCH_PROBE_DIR/<pid>.jsonl``: when the trial function
is entered, when its imports are done, when ``train()`` starts and ends, and how long each report
(the hand-off of metrics and checkpoints to Ray) took.

Only the standard library is imported at module level: the trial processes import this module
first, and its own imports must not be counted as the trainable's.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

PROBE_ENV = "BITSWEEP_BENCH_PROBE_DIR"

# The trial (or Train run) this process is working for; marks made by the patched ``train`` and
# ``report`` carry it. A module global: one trial at a time runs in a process.
_current: dict[str, Any] = {"tag": None, "rank": 0}


def mark(event: str, **extra: Any) -> None:
    """Append an event to this process's probe file (no-op without ``BITSWEEP_BENCH_PROBE_DIR``)."""
    directory = os.environ.get(PROBE_ENV)
    if not directory:
        return
    record = {"t": time.time(), "pid": os.getpid(), "event": event, **_current, **extra}
    with open(Path(directory) / f"{os.getpid()}.jsonl", "a") as stream:
        stream.write(json.dumps(record) + "\n")


def read_events(directory: Path) -> list[dict[str, Any]]:
    """Every event written under ``directory``, in time order."""
    events = []
    for path in directory.glob("*.jsonl"):
        events.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return sorted(events, key=lambda e: e["t"])


def _instrument_worker_module() -> None:
    """Time ``train()`` and every ``RayReporter.report`` of ``trainables.worker`` (once/process)."""
    import trainables.worker as worker

    if getattr(worker, "_bench_probed", False):  # a reused actor keeps the patched module
        return
    original_train = worker.train
    original_report = worker.RayReporter.report

    def timed_train(*args: Any, **kwargs: Any) -> Any:
        mark("train_start")
        try:
            return original_train(*args, **kwargs)
        finally:
            mark("train_end")

    def timed_report(self: Any, metrics: dict[str, float], checkpoint: Any) -> None:
        started = time.time()
        original_report(self, metrics, checkpoint)
        mark("report", seconds=time.time() - started, step=metrics.get("step"))

    worker.train = timed_train
    worker.RayReporter.report = timed_report
    worker._bench_probed = True


def probed_single_process_trial(
    config: dict[str, Any], base_run_config: dict[str, Any] | None = None
) -> None:
    """:func:`orchestrator.trials.single_process_trial`, with entry/import/train/exit marks."""
    import ray.tune

    _current.update(tag=ray.tune.get_context().get_trial_id(), rank=0)
    mark("entry")
    import torch  # noqa: F401  (the trial's heavy imports, timed on their own)

    import trainables.worker  # noqa: F401

    mark("imported")
    _instrument_worker_module()
    from orchestrator.trials import single_process_trial

    single_process_trial(config, base_run_config)
    mark("exit")


def probed_train_fn_per_worker(config: dict[str, Any]) -> None:
    """:func:`trainables.worker.train_fn_per_worker`, with the same marks on every rank."""
    import ray.train

    context = ray.train.get_context()
    tag = context.get_experiment_name().removeprefix("train-")
    _current.update(tag=tag, rank=context.get_world_rank())
    mark("worker_entry")
    import torch  # noqa: F401

    import trainables.worker as worker

    mark("worker_imported")
    _instrument_worker_module()
    original = getattr(worker, "_bench_original_train_fn", worker.train_fn_per_worker)
    original(config)
    mark("worker_exit")


def probed_distributed_trial(
    config: dict[str, Any], base_run_config: dict[str, Any] | None = None
) -> None:
    """:func:`orchestrator.trials.distributed_trial`, launching probed Train workers."""
    import ray.tune

    _current.update(tag=ray.tune.get_context().get_trial_id(), rank=0)
    mark("entry")
    # Ray Train copies some RAY_TRAIN_* variables from this process to its controller and workers:
    # the benchmark sets them per trial (to compare settings within one Ray instance).
    saved = dict(os.environ)
    os.environ.update(train_env())
    import ray.train.torch

    import trainables.worker as worker

    mark("imported")
    # distributed_trial imports the worker function at call time, so it picks up this one.
    if not hasattr(worker, "_bench_original_train_fn"):
        worker._bench_original_train_fn = worker.train_fn_per_worker  # type: ignore[attr-defined]
    worker.train_fn_per_worker = probed_train_fn_per_worker  # type: ignore[assignment]
    from orchestrator.trials import distributed_trial

    try:
        distributed_trial(config, base_run_config)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    _current.update(tag=ray.tune.get_context().get_trial_id(), rank=0)
    mark("exit")


TRAIN_ENV_FILE = "train_env.json"


def train_env() -> dict[str, str]:
    """The ``RAY_TRAIN_*`` settings the benchmark asks the next TorchTrainer trials to use."""
    directory = os.environ.get(PROBE_ENV)
    path = Path(directory) / TRAIN_ENV_FILE if directory else None
    return json.loads(path.read_text()) if path is not None and path.exists() else {}


def set_train_env(directory: Path, env: dict[str, str]) -> None:
    """Make the next probed TorchTrainer trials run with ``env`` (empty: the runner's own)."""
    path = directory / TRAIN_ENV_FILE
    if env:
        path.write_text(json.dumps(env))
    elif path.exists():
        path.unlink()
