"""The Optuna side of a sweep: the sampler, and a searcher that tells Optuna what really happened.

Ray's ``OptunaSearch`` hands a trial that a scheduler stopped early to Optuna as COMPLETE with its
truncated last value, so TPE ranks a trial stopped after 50 steps against trials that ran 400.
:class:`StudySearch` fixes the handoff: every evaluation is reported to the Optuna trial at the
loop's training step (``Trial.report``), and a trial that ended before ``train.steps`` is told
PRUNED. Optuna's TPE then puts pruned trials behind every complete one and ranks them among
themselves by the deepest step they reached, then by the value there
(``optuna.samplers._tpe.sampler._get_pruned_trial_score``), which is the multi-fidelity ranking
successive halving assumes. It also carries the study's pruner for
:class:`orchestrator.schedulers.OptunaPrunerScheduler`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from orchestrator.reconcile import ReconcilingOptunaSearch
from orchestrator.study import ReadableStudy, forget_run

STEP_KEY = "step"


def make_sampler(
    *,
    seed: int,
    multivariate: bool = True,
    n_startup_trials: int = 5,
    constant_liar: bool = True,
) -> optuna.samplers.TPESampler:
    """TPE as small budgets want it.

    ``multivariate`` models the searched keys jointly (Falkner et al. 2018: better on correlated
    hyperparameters such as lr and warm-up), ``n_startup_trials`` random trials first (Optuna's
    default of 10 spends most of a 16-trial budget at random), ``constant_liar`` makes concurrent
    trials avoid proposing the same point while others run. Constraints a trial carries
    (``Trial.set_constraint``, see :class:`StudySearch`) make TPE prefer feasible regions.
    """
    return optuna.samplers.TPESampler(
        seed=seed,
        multivariate=multivariate,
        n_startup_trials=n_startup_trials,
        constant_liar=constant_liar,
    )


def make_pruner(kind: str, *, min_resource: int, max_resource: int, reduction_factor: float) -> Any:
    """Optuna's successive-halving (``optuna-sh``) or Hyperband (``optuna-hyperband``) pruner,
    with resources counted in training steps."""
    if kind == "optuna-sh":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_resource, reduction_factor=round(reduction_factor)
        )
    if kind == "optuna-hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min_resource,
            max_resource=max_resource,
            reduction_factor=round(reduction_factor),
        )
    raise ValueError(f"unknown Optuna pruner {kind!r}; valid: optuna-sh, optuna-hyperband")


class StudySearch(ReadableStudy, ReconcilingOptunaSearch):
    """``OptunaSearch`` that reports intermediate values and stores early-stopped trials as PRUNED.

    It reconciles its study with Tune's saved state on resume (``ReconcilingOptunaSearch``).

    Args:
        total_steps: ``train.steps``; a trial whose last result has a smaller ``step`` stopped
            early.
        pruner: the study's pruner (Optuna's ``NopPruner`` when None).
        constraint: ``proposed config -> constraint value`` (or None; feasible when <= 0), set
            on the Optuna trial as constraint ``constraint_name`` when it is proposed, where
            Optuna's constrained TPE reads it.
        **kwargs: passed to ``OptunaSearch`` (space, metric, mode, sampler, study_name, storage).
    """

    def __init__(
        self,
        *,
        total_steps: int,
        pruner: Any = None,
        constraint: Callable[[Mapping[str, Any]], float | None] | None = None,
        constraint_name: str = "constraint",
        **kwargs: Any,
    ) -> None:
        self._total_steps = int(total_steps)
        self._pruner = pruner
        self._constraint = constraint
        self._constraint_name = constraint_name
        self._reported: dict[str, set[int]] = {}
        super().__init__(**kwargs)

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)
        self._use_pruner()

    def _use_pruner(self) -> None:
        # the pruner is not stored with the study: set it on every (re)load
        self._ot_study.pruner = self._pruner or optuna.pruners.NopPruner()

    def restore(self, checkpoint_path: str) -> None:
        """Restore (and reconcile) the searcher, then give the reloaded study its pruner."""
        super().restore(checkpoint_path)
        if self._ot_study is not None:
            self._use_pruner()

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (created once the search knows its space, metric and mode)."""
        return self._ot_study

    def optuna_trial(self, trial_id: str) -> Any:
        """The Optuna trial behind Tune's ``trial_id`` (None before Tune asked for its config)."""
        return self._ot_trials.get(trial_id)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Optuna's proposal, with its constraint recorded on the Optuna trial."""
        config = super().suggest(trial_id)
        if config is not None and self._constraint is not None:
            value = self._constraint(config)
            if value is not None:
                self._ot_trials[trial_id].set_constraint(self._constraint_name, value)
        return config

    def report(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Report ``result``'s objective at its training step (single objective; once per step).

        Returns whether a value was reported (multi-objective studies take no reports).
        """
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return False
        ot_trial = self._ot_trials.get(trial_id)
        value = result.get(self.metric)
        if ot_trial is None or value is None:
            return False
        step = int(result.get(STEP_KEY, result.get("training_iteration", 0)))
        seen = self._reported.setdefault(trial_id, set())
        if step not in seen:
            seen.add(step)
            ot_trial.report(float(value), step)
        return True

    def should_prune(self, trial_id: str) -> bool:
        """What the study's pruner says about ``trial_id`` now."""
        ot_trial = self._ot_trials.get(trial_id)
        return bool(ot_trial is not None and ot_trial.should_prune())

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Report every evaluation at the loop's step (Ray's reports by iteration)."""
        self.report(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """COMPLETE for trials that reached ``train.steps``, PRUNED for those stopped before."""
        stopped_early = (
            not error
            and result is not None
            and trial_id not in self._completed_trials
            and trial_id in self._ot_trials
            and int(result.get(STEP_KEY, self._total_steps)) < self._total_steps
        )
        # Tune skips on_trial_result for the result a scheduler stops on (ASHA also stops a
        # trial at max_t): report it here so every trial's history is whole
        if not error and result:
            self.report(trial_id, result)
        self._reported.pop(trial_id, None)
        if stopped_early:
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
        else:
            super().on_trial_complete(trial_id, result, error)
        if trial_id in self._completed_trials:
            self._forget(trial_id)

    def _forget(self, trial_id: str) -> None:
        """Let go of a told trial's ``optuna.Trial`` and run link (issue 17: a flat driver).

        The study keeps the finished trial (TPE reads it there); nothing asks the handle again:
        every hook checks ``_completed_trials`` first, and a resume's reconciliation needs only
        the trials not yet told. The searcher's state, pickled at each Tune snapshot, stays the
        size of the running trials instead of growing with the sweep.
        """
        self._ot_trials.pop(trial_id, None)
        forget_run(trial_id)


def prune_running(db: Path, study_name: str) -> list[int]:
    """After a complete sweep: tell PRUNED every study trial still RUNNING.

    Tune ends the running trials of a sweep a stopper stopped (``search.time_budget_s``,
    ``search.stop_at``) without ``on_trial_complete``; they stopped early, with the history they
    reported. Returns their trial numbers.
    """
    if not db.is_file():
        return []
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return []
    pruned = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(frozen._trial_id, TrialState.PRUNED)
        pruned.append(frozen.number)
    return pruned
