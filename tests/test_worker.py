"""The trainable: what a worker reads of its config (fast, no Ray), and on a real local Ray
2-worker DDP and FSDP2 runs and recovery from a killed worker (slow)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from trainables.config import RunConfig
from trainables.quant import load_packed_checkpoint
from trainables.trial_settings import TrialSettings, worker_config
from trainables.worker import _run, train_fn_per_worker

CONTRACT = {
    "step", "train/loss", "loss/task", "loss/quant", "val/loss", "val/bpb", "model/params",
    "model/bits_total", "model/bits_per_weight", "model/packed_bytes", "quant/lambda",
    "growth/stage", "perf/tokens_per_s",
}  # fmt: skip


def _run_config(steps: int, eval_every: int) -> dict[str, Any]:
    cfg = RunConfig.from_dict(
        {
            "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "seq_len": 32},
            "data": {"eval_batches": 2},
            "train": {"steps": steps, "eval_every": eval_every, "batch_size": 8, "threads": 1},
            "loss": {"lambda_q": 0.1},
        }
    )
    return cfg.to_flat()


def _fit(train_fn: Any, config: dict[str, Any], storage: Path, name: str, max_failures: int = 0):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_fn,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    return trainer.fit()


class _Checkpoint:
    """What Ray's ``Checkpoint.from_directory`` is to the reporter: records what was written."""

    def __init__(self, files: set[str]) -> None:
        self.files = files

    @classmethod
    def from_directory(cls, path: str) -> _Checkpoint:
        return cls({p.name for p in Path(path).iterdir()})


@pytest.mark.parametrize(("every", "expected"), [(None, [2, 4, 6, 8]), (4, [4, 8])])
def test_the_worker_checkpoints_at_the_cadence_its_settings_give(
    every: int | None, expected: list[int]
) -> None:
    reports: list[tuple[int, Any]] = []

    def report(metrics: dict[str, float], checkpoint: Any = None) -> None:
        reports.append((int(metrics["step"]), checkpoint))

    settings = TrialSettings(checkpoint_every=every)
    result = _run(worker_config(_run_config(8, 2), settings), report, _Checkpoint, None, 0)
    assert result.metrics["step"] == 8
    assert [step for step, _ in reports] == [2, 4, 6, 8]  # every evaluation is reported
    assert [step for step, ckpt in reports if ckpt is not None] == expected
    assert "packed" in reports[-1][1].files  # the final checkpoint carries the packed model


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_worker_run_reports_the_contract(
    ray_session: Any, tmp_path: Path, strategy: str
) -> None:
    config = worker_config(
        _run_config(12, 6), TrialSettings(workers_per_trial=2, strategy=strategy)
    )
    result = _fit(train_fn_per_worker, config, tmp_path, f"two-{strategy}")
    assert result.error is None
    assert set(result.metrics) >= CONTRACT
    assert result.metrics["step"] == 12
    assert result.metrics["val/bpb"] < 8.0
    checkpoint = Path(result.checkpoint.path)
    expected = {"dcp", "extra.pt", "packed"} if strategy == "fsdp" else {"state.pt", "packed"}
    assert {p.name for p in checkpoint.iterdir()} == expected
    assert load_packed_checkpoint(checkpoint / "packed").manifest["training_steps"] == 12


def recording_train_fn(config: dict[str, Any]) -> None:
    """The real worker function, after writing this worker's pid and whether it resumes."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    resumed = ray.train.get_checkpoint() is not None
    marker = (
        Path(config["pid_dir"]) / f"rank{rank}-{os.getpid()}.{'resumed' if resumed else 'fresh'}"
    )
    marker.write_text(str(os.getpid()))
    train_fn_per_worker({k: v for k, v in config.items() if k != "pid_dir"})


@pytest.mark.slow
def test_killed_worker_resumes_from_last_checkpoint(ray_session: Any, tmp_path: Path) -> None:
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    pids = tmp_path / "pids"
    pids.mkdir()
    storage = tmp_path / "storage"
    config = {
        **worker_config(_run_config(400, 20), TrialSettings(workers_per_trial=2, strategy="ddp")),
        "pid_dir": str(pids),
    }
    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            # the second checkpoint on storage means the controller registered the first one
            if len(list(storage.glob("*/checkpoint_*"))) >= 2 and list(pids.glob("rank1-*.fresh")):
                pid = int(next(pids.glob("rank1-*.fresh")).read_text())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    result = _fit(recording_train_fn, config, storage, "killed", max_failures=1)
    killer.join(timeout=5)
    assert killed, "the worker was never killed"
    assert result.error is None
    assert result.metrics["step"] == 400
    resumed = sorted(p.name for p in pids.glob("*.resumed"))
    assert len(resumed) == 2, sorted(p.name for p in pids.iterdir())
