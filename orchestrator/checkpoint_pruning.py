"""A stopped trial's checkpoints, deleted once no scheduler can resume it.

ASHA and Optuna's pruners stop a trial for good: its checkpoints (Tune's ``checkpoint_*`` in the
trial folder, or the Train run's of a multi-worker trial under ``<experiment>/train``) only take
disk. Tune's HyperBand pauses trials and resumes them later, and PBT clones a stopped trial's
checkpoint into another, so under those two nothing is deleted. A finished trial keeps its kept
checkpoints (``storage.keep_checkpoints``): the best trial's model is exported from them.

The callback runs after the MLflow callback in the same hook, so a stopped trial's packed model
has been uploaded (or buffered) before its folder goes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# schedulers that may resume or clone a trial they stopped
RESUMING_SCHEDULERS = ("hyperband", "pbt")


def prunes_stopped_trials(scheduler_type: str) -> bool:
    """Whether a trial that ``scheduler_type`` stopped can never run again."""
    return scheduler_type not in RESUMING_SCHEDULERS


def stopped_early(last_result: dict[str, Any] | None, total_steps: int) -> bool:
    """Whether a trial whose last report is ``last_result`` ended before ``total_steps``."""
    if not last_result:
        return False
    step = last_result.get("step")
    return step is not None and int(step) < total_steps


def checkpoint_dirs(trial_path: str | None, train_storage: str, trial_id: str) -> list[Path]:
    """Every checkpoint folder of one trial: Tune's in its folder and its Train run's."""
    found: list[Path] = []
    if trial_path and "://" not in trial_path:
        found += sorted(Path(trial_path).glob("checkpoint_*"))
    if "://" not in train_storage:
        found += sorted((Path(train_storage) / f"train-{trial_id}").glob("checkpoint_*"))
    return [p for p in found if p.is_dir()]


def delete_checkpoints(dirs: list[Path]) -> int:
    """Delete ``dirs``; returns the bytes freed (a folder that cannot be deleted is logged)."""
    freed = 0
    for folder in dirs:
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        try:
            shutil.rmtree(folder)
        except OSError as err:
            log.warning("could not delete the stopped trial's checkpoint %s: %s", folder, err)
            continue
        freed += size
    return freed


def stopped_trial_pruner(scheduler_type: str, total_steps: int, train_storage: str) -> Any:
    """A Tune callback that deletes a stopped trial's checkpoints (None when the scheduler may
    resume or clone stopped trials)."""
    if not prunes_stopped_trials(scheduler_type):
        return None
    from ray.tune import Callback

    class StoppedTrialPruner(Callback):
        """Deletes the checkpoints of a trial the scheduler stopped for good."""

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if not stopped_early(trial.last_result, total_steps):
                return
            dirs = checkpoint_dirs(getattr(trial, "path", None), train_storage, trial.trial_id)
            freed = delete_checkpoints(dirs)
            if freed:
                log.info("trial %s stopped early: %d bytes of checkpoints deleted",
                         trial.trial_id, freed)  # fmt: skip

    return StoppedTrialPruner()
