"""Make the Optuna study agree with Tune's saved experiment state when a sweep is resumed.

The study (``optuna.db``) is written at once, on every ``ask`` and ``tell``; Tune saves its
experiment state, with the searcher's map of Tune trial -> Optuna trial, only every ~10 s. A
driver killed between the two leaves the study ahead: a trial Optuna counts as complete is still
running in Tune's state, Tune runs it again, and its first report used to abort the whole fit with
``UpdateFinishedTrialError``. :class:`ReconcilingOptunaSearch` (what bitsweep sweeps use) reloads
the study from its storage after Tune restores the searcher and then

- a trial the study has finished but the searcher had not: the searcher treats it as complete
  (the study keeps the result it already has; Tune's rerun only completes Tune's and MLflow's view),
- a trial the study has running that Tune never saved (asked after the last snapshot): marked
  FAIL in the study, with the user attribute ``bitsweep.reconciled`` saying why.

Tune trials are never dropped: Tune's state decides what runs, the study only records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)

RECONCILED_ATTR = "bitsweep.reconciled"
# in a saved searcher's state when its study was left out (read back from its storage): the
# storage ids of the Optuna trials it had running, by Tune trial id
SAVED_TRIAL_IDS = "_bitsweep_saved_trial_ids"


@dataclass
class Reconciled:
    """What :func:`reconcile_searcher` changed."""

    ahead: list[str] = field(default_factory=list)  # Tune trial ids the study had finished
    orphans: list[int] = field(default_factory=list)  # study trial numbers marked FAIL


def fail_orphans(study: Any, known: set[int]) -> list[int]:
    """Mark FAIL every RUNNING trial of ``study`` whose storage id is not in ``known``.

    Returns their trial numbers. Used on resume (:func:`reconcile_searcher`) and when a sweep
    killed before Tune's first snapshot starts again with the same study.
    """
    from optuna.trial import TrialState

    failed = []
    for frozen in study.get_trials(deepcopy=False):
        if frozen.state == TrialState.RUNNING and frozen._trial_id not in known:
            study._storage.set_trial_user_attr(
                frozen._trial_id, RECONCILED_ATTR, "not in Tune's saved state (driver stopped)"
            )
            study._storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
            failed.append(frozen.number)
    return failed


def reconcile_searcher(searcher: OptunaSearch) -> Reconciled:
    """Reload ``searcher``'s study from its storage and settle the trials the two disagree on.

    A searcher with an in-memory study (no storage) pickles its whole study with Tune's state,
    so the two already agree and nothing changes.
    """
    import optuna

    result = Reconciled()
    storage = getattr(searcher, "_storage", None)
    saved_ids: dict[str, int] | None = searcher.__dict__.pop(SAVED_TRIAL_IDS, None)
    if storage is None or (searcher._ot_study is None and saved_ids is None):
        return result
    if saved_ids is None:
        saved_ids = {trial_id: t._trial_id for trial_id, t in searcher._ot_trials.items()}
    # The unpickled study's cache holds trial states as of Tune's snapshot: read them afresh.
    study = optuna.load_study(
        study_name=searcher._study_name, storage=storage, sampler=searcher._sampler
    )
    by_storage_id: dict[int, str] = {}
    for trial_id, storage_id in saved_ids.items():
        searcher._ot_trials[trial_id] = optuna.trial.Trial(study, storage_id)
        by_storage_id[storage_id] = trial_id
    for frozen in study.get_trials(deepcopy=False):
        trial_id = by_storage_id.get(frozen._trial_id)
        told = trial_id in searcher._completed_trials
        if trial_id is not None and frozen.state.is_finished() and not told:
            searcher._completed_trials.add(trial_id)
            result.ahead.append(trial_id)
    result.orphans = fail_orphans(study, set(by_storage_id))
    searcher._ot_study = study
    if result.ahead or result.orphans:
        log.info(
            "study reconciled with Tune's state: %d trial(s) already told, %d orphan(s) failed",
            len(result.ahead),
            len(result.orphans),
        )
    return result


class ReconcilingOptunaSearch(OptunaSearch):
    """Tune's ``OptunaSearch`` that reconciles its study with Tune's state on restore.

    Reports and completions of a trial the study has already finished are dropped quietly (Tune
    replays them when it reruns a trial the study counted before a kill).
    """

    def save(self, checkpoint_path: str) -> None:
        """Pickle the searcher as Tune's ``OptunaSearch`` does, leaving out a stored study.

        Tune saves the searcher at every experiment snapshot; its study (also reached through
        each running ``optuna.Trial``) carries Optuna's cache of every trial, so the file, and
        the time to write it, grew with the sweep, while :meth:`restore` reads the study afresh
        from its storage anyway (issue 17). The running trials are saved as their storage ids.
        """
        import pickle

        state = self.__dict__.copy()
        if state.get("_storage") is not None and state.get("_ot_study") is not None:
            state["_ot_study"] = None
            state["_ot_trials"] = {}
            state[SAVED_TRIAL_IDS] = {
                trial_id: trial._trial_id for trial_id, trial in self._ot_trials.items()
            }
        with open(checkpoint_path, "wb") as file:
            pickle.dump(state, file)

    def restore(self, checkpoint_path: str) -> None:
        """Restore the searcher, then reconcile it with the study in its storage."""
        super().restore(checkpoint_path)
        self.reconciled = reconcile_searcher(self)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Forward a result unless the study already ended this trial."""
        if trial_id in self._completed_trials:
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Tell the study unless it already ended this trial."""
        if trial_id in self._completed_trials:
            return
        super().on_trial_complete(trial_id, result, error)


def has_tune_state(path: str) -> bool:
    """Whether Tune saved an experiment state (``experiment_state-*.json``) under ``path``."""
    import pyarrow.fs as pafs

    location = path if "://" in path else str(Path(path).expanduser().resolve())
    filesystem, root = pafs.FileSystem.from_uri(location)
    entries = filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return any(
        e.base_name.startswith("experiment_state-") and e.base_name.endswith(".json")
        for e in entries
    )


def fail_study_orphans(db: Path, study_name: str) -> list[int]:
    """Mark FAIL the RUNNING trials of the study in ``db`` (a sweep killed before Tune saved).

    Such a sweep starts again from nothing under its own name; what its first attempt asked
    Optuna for was never trained to the end. Returns the failed trial numbers.
    """
    import optuna

    if not db.is_file():
        return []
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no study of that name yet
        return []
    return fail_orphans(study, set())
