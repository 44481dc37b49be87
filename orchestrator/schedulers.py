"""Early-stopping schedulers beyond Tune's own: Pareto-rank ASHA and Optuna's pruners.

- :class:`ParetoASHA`: asynchronous successive halving for several objectives (MO-ASHA,
  Schmucker et al. 2021). At each rung a trial continues only if it is among the best
  ``1 / reduction_factor`` of the trials recorded there, ranked by non-dominated sorting with an
  epsilon-net tie break (:mod:`orchestrator.pareto_rank`). Tune's ASHA looks at one metric only.
- :class:`OptunaPrunerScheduler`: stops a trial when the Optuna study's pruner (successive
  halving or Hyperband) says so, from the values the trial reported to that same study, so the
  sampler and the pruner share one view of the trials.

- :class:`FinalStepAwarePBT`: Tune's population-based training, except that a trial at its last
  step is no donor (nothing is left to train after its checkpoint).

All decide on ``training_iteration`` (one per evaluation) like the ASHA the runner builds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from orchestrator.pareto_rank import pareto_rank_order

if TYPE_CHECKING:
    from orchestrator.search import StudySearch

TIME_ATTR = "training_iteration"


class ParetoASHA(FIFOScheduler):
    """Asynchronous successive halving promoting by Pareto rank over several metrics.

    Args:
        metrics: the objectives' metric names.
        modes: ``"min"`` or ``"max"`` per metric.
        max_t: the most evaluations a trial runs.
        grace_period: the first rung (evaluations before any stop).
        reduction_factor: keep the best ``1 / reduction_factor`` at each rung.
    """

    def __init__(
        self,
        metrics: list[str],
        modes: list[str],
        *,
        max_t: int,
        grace_period: int = 1,
        reduction_factor: float = 2.0,
    ) -> None:
        super().__init__()
        if len(metrics) != len(modes) or not metrics:
            raise ValueError("ParetoASHA needs one mode per metric")
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        self.metrics = list(metrics)
        self.signs = np.array([1.0 if m == "min" else -1.0 for m in modes])  # to minimization
        self.rf = float(reduction_factor)
        self.max_t = int(max_t)
        rungs = []
        milestone = float(max(1, grace_period))
        while milestone < max_t:
            rungs.append(round(milestone))
            milestone *= self.rf
        self.rungs: dict[int, dict[str, np.ndarray]] = {r: {} for r in sorted(set(rungs))}
        self.num_stopped = 0

    def _vector(self, result: dict[str, Any]) -> np.ndarray | None:
        try:
            values = np.array([float(result[m]) for m in self.metrics])
        except (KeyError, TypeError, ValueError):
            return None
        return values * self.signs  # [M], smaller is better

    def decide(self, trial_id: str, iteration: int, result: dict[str, Any]) -> str:
        """CONTINUE or STOP for ``trial_id`` reporting ``result`` at evaluation ``iteration``."""
        vector = self._vector(result)
        if vector is None:
            return TrialScheduler.CONTINUE
        action = TrialScheduler.CONTINUE
        for milestone, recorded in self.rungs.items():
            if iteration < milestone or trial_id in recorded:
                continue
            recorded[trial_id] = vector
            ids = list(recorded)
            keep = max(1, math.ceil(len(ids) / self.rf))
            order = pareto_rank_order(np.stack([recorded[i] for i in ids]))  # best first
            promoted = {ids[i] for i in order[:keep]}
            if trial_id not in promoted:
                action = TrialScheduler.STOP
                break
        return action

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        """Record the trial at every rung it passed; stop it when it ranks below the cut."""
        if TIME_ATTR not in result:
            return TrialScheduler.CONTINUE
        action = self.decide(trial.trial_id, int(result[TIME_ATTR]), result)
        if action == TrialScheduler.STOP:
            self.num_stopped += 1
        return action

    def debug_string(self) -> str:
        """One line for Tune's status output."""
        sizes = ", ".join(f"{r}: {len(rec)}" for r, rec in self.rungs.items())
        return f"ParetoASHA: {self.num_stopped} stopped; trials per rung {{{sizes}}}"


class OptunaPrunerScheduler(FIFOScheduler):
    """Stops trials when the study's own pruner says so (single objective).

    Each result is reported to the trial's Optuna trial at the loop's ``step`` before the pruner
    is asked, so successive halving and Hyperband compare trials at equal training steps.
    """

    def __init__(self, searcher: StudySearch, metric: str) -> None:
        super().__init__()
        self.searcher = searcher
        self.objective = metric
        self.num_stopped = 0

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        """Report the value to Optuna and ask its pruner."""
        if self.objective not in result:
            return TrialScheduler.CONTINUE
        if self.searcher.report(trial.trial_id, result) and self.searcher.should_prune(
            trial.trial_id
        ):
            self.num_stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        """One line for Tune's status output."""
        return f"OptunaPrunerScheduler: {self.num_stopped} stopped"


class FinalStepAwarePBT(PopulationBasedTraining):
    """Population-based training whose donors still have steps to train.

    Tune's PBT may clone a trial whose last result is its final step (it is not finished until
    its function returns): the target then restarts from a finished model, has nothing left to
    train and reports nothing more, so its run's last result is its own older lineage, not the
    model it ended with. Here such a trial can be exploited but is not a donor.

    Args:
        total_steps: the trials' ``train.steps``, against the ``step`` their results report.
        **kwargs: :class:`~ray.tune.schedulers.PopulationBasedTraining`'s arguments.
    """

    def __init__(self, *, total_steps: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.total_steps = total_steps

    def _at_final_step(self, trial: Any) -> bool:
        result = self._trial_state[trial].last_result or {}
        return float(result.get("step", 0.0)) >= self.total_steps

    def _quantiles(self) -> tuple[list[Any], list[Any]]:
        lower, upper = super()._quantiles()
        donors = [trial for trial in upper if not self._at_final_step(trial)]
        return (lower, donors) if donors else ([], [])  # no donor left: nobody is exploited
