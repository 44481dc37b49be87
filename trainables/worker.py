"""The Ray edge of the trainable: a Ray Train worker function and a one-process Tune trainable.

Both run :func:`trainables.loop.train` unchanged; they only supply a reporter that forwards the
metrics (and checkpoints) to Ray, and resume from the checkpoint Ray hands back after a restart.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainables.config import RunConfig
from trainables.loop import TrainResult, train
from trainables.parallel import Parallel, pick_device
from trainables.reporting import CheckpointWriter
from trainables.trial_settings import RUN_CONFIG_KEY, TRIAL_SETTINGS_KEY, trial_settings

__all__ = [
    "RUN_CONFIG_KEY",
    "TRIAL_SETTINGS_KEY",
    "RayReporter",
    "train_fn_per_worker",
    "tune_function_trainable",
]


class RayReporter:
    """Forwards reports to ``report_fn`` (``ray.train.report`` or ``ray.tune.report``).

    Every rank calls ``report`` (Ray Train requires it). A due checkpoint is written into a fresh
    temporary directory: by rank 0 alone, or by every rank for sharded (FSDP) checkpoints, whose
    shard files Ray gathers into one checkpoint.
    """

    def __init__(
        self,
        report_fn: Callable[..., None],
        checkpoint_cls: type,
        parallel: Parallel,
        *,
        delete_after_upload: bool = True,
    ) -> None:
        self.report_fn = report_fn
        self.checkpoint_cls = checkpoint_cls
        self.parallel = parallel
        self.delete_after_upload = delete_after_upload

    def report(self, metrics: dict[str, float], checkpoint: CheckpointWriter | None) -> None:
        """Report ``metrics`` to Ray, attaching the checkpoint ``checkpoint`` writes, if any."""
        if checkpoint is None:
            self.report_fn(metrics)
            return
        directory = Path(tempfile.mkdtemp(prefix="bitsweep-ckpt-"))
        try:
            checkpoint(directory)
            sharded = self.parallel.strategy == "fsdp" and self.parallel.world_size > 1
            attach = self.parallel.is_main or sharded
            ray_checkpoint = self.checkpoint_cls.from_directory(str(directory)) if attach else None
            self.report_fn(metrics, checkpoint=ray_checkpoint)
        finally:
            if self.delete_after_upload:
                shutil.rmtree(directory, ignore_errors=True)


def _restored_copy(checkpoint: Any) -> Path | None:
    """A local copy of Ray's checkpoint (its ``as_directory`` view may vanish after the block)."""
    if checkpoint is None:
        return None
    target = Path(tempfile.mkdtemp(prefix="bitsweep-restore-"))
    with checkpoint.as_directory() as directory:
        shutil.copytree(directory, target, dirs_exist_ok=True)
    return target


def _run(config: dict[str, Any], report_fn: Callable[..., None], checkpoint_cls: type,
         checkpoint: Any, local_rank: int) -> TrainResult:  # fmt: skip
    # a searched quant.scheme drops the base scheme's options it does not take
    cfg = RunConfig.from_flat(config[RUN_CONFIG_KEY], retarget_quant=True)
    settings = trial_settings(config)
    device = pick_device(cfg.train.device, local_rank)
    find_unused = cfg.model.early_exit or cfg.model.layer_dropout > 0 or cfg.loss.lambda_exit > 0
    parallel = Parallel.from_environment(
        settings.strategy, device, find_unused_parameters=find_unused
    )
    resume_from = _restored_copy(checkpoint)
    try:
        return train(
            cfg,
            reporter=RayReporter(report_fn, checkpoint_cls, parallel),
            parallel=parallel,
            resume_from=resume_from,
            checkpoint_every=settings.checkpoint_every,
        )
    finally:
        if resume_from is not None:
            shutil.rmtree(resume_from, ignore_errors=True)


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """Ray Train ``train_loop_per_worker``: one rank of a DDP / FSDP2 run.

    ``config`` holds the flat run config under ``RUN_CONFIG_KEY`` and the
    :class:`~trainables.trial_settings.TrialSettings` (strategy, checkpoint cadence) under
    ``TRIAL_SETTINGS_KEY`` (see :func:`trainables.trial_settings.worker_config`). Resumes from
    ``ray.train.get_checkpoint()`` after a worker-group restart.
    """
    import ray.train

    context = ray.train.get_context()
    _run(
        config,
        ray.train.report,
        ray.train.Checkpoint,
        ray.train.get_checkpoint(),
        context.get_local_rank(),
    )


def tune_function_trainable(config: dict[str, Any]) -> None:
    """A one-process Tune function trainable running the same loop (no Train controller).

    Used for one-worker trials, where a TorchTrainer's start-up would dominate small runs.
    Resumes from ``ray.tune.get_checkpoint()`` when Tune restores the trial. Safe to call again in
    the same process for the next trial (Tune's ``reuse_actors``).
    """
    import ray.tune
    import torch

    # Tune may hand this process to the next trial (``reuse_actors``): leave the thread count as
    # it was, so a trial that does not set ``train.threads`` never inherits another trial's.
    threads = torch.get_num_threads()
    try:
        _run(config, ray.tune.report, ray.tune.Checkpoint, ray.tune.get_checkpoint(), 0)
    finally:
        torch.set_num_threads(threads)
