"""The Pareto-rank ASHA's promotion decisions and PBT's donors (real scheduler objects, no
cluster needed)."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers.trial_scheduler import TrialScheduler

from orchestrator.schedulers import ParetoASHA

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def _result(iteration: int, acc: float, bits: float) -> dict[str, float]:
    return {"training_iteration": iteration, "val/acc": acc, "model/bits_total": bits}


def test_rungs_follow_grace_period_and_reduction_factor() -> None:
    sched = ParetoASHA(["a", "b"], ["min", "min"], max_t=16, grace_period=1, reduction_factor=2)
    assert list(sched.rungs) == [1, 2, 4, 8]


def test_a_dominated_trial_stops_and_a_trade_off_continues() -> None:
    sched = ParetoASHA(
        ["val/acc", "model/bits_total"], ["max", "min"], max_t=8, grace_period=1,
        reduction_factor=2,
    )  # fmt: skip
    assert sched.decide("a", 1, _result(1, 0.9, 1000.0)) == CONTINUE  # alone at the rung
    # b trades accuracy for bits: both on the front, ceil(2/2) = 1 promoted; the epsilon-net
    # starts from the best first objective (a), so b stops
    assert sched.decide("b", 1, _result(1, 0.8, 100.0)) == STOP
    # c is dominated by a (less accurate and bigger): not promoted
    assert sched.decide("c", 1, _result(1, 0.85, 2000.0)) == STOP
    # d is the most accurate: 4 recorded, 2 promoted from the front {a, b, d}: d first, then the
    # point farthest from it (b, the other end of the front), not a from the middle
    assert sched.decide("d", 1, _result(1, 0.95, 5000.0)) == CONTINUE
    assert sched.decide("e", 1, _result(1, 0.9, 1200.0)) == STOP


def test_single_objective_ranking_matches_asha_cut() -> None:
    # with one metric the Pareto rank is the plain order: the worse half stops at a rung
    sched = ParetoASHA(["loss"], ["min"], max_t=4, grace_period=1, reduction_factor=2)
    assert sched.decide("a", 1, {"loss": 1.0}) == CONTINUE
    assert sched.decide("b", 1, {"loss": 2.0}) == STOP
    assert sched.decide("c", 1, {"loss": 0.5}) == CONTINUE


def test_trial_passing_several_rungs_at_once_is_judged_at_each() -> None:
    sched = ParetoASHA(["loss"], ["min"], max_t=8, grace_period=1, reduction_factor=2)
    assert sched.decide("a", 1, {"loss": 1.0}) == CONTINUE
    assert sched.decide("a", 2, {"loss": 0.9}) == CONTINUE
    assert sched.decide("b", 1, {"loss": 0.8}) == CONTINUE
    # b reports its second rung with a worse value than a had there
    assert sched.decide("b", 2, {"loss": 0.95}) == STOP


class _FakeTrial:
    """What PBT's quantiles read of a trial."""

    def __init__(self, name: str) -> None:
        self.experiment_tag = name

    def is_finished(self) -> bool:
        return False


def _pbt_with(steps: dict[str, float], scores: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    from ray.tune.schedulers.pbt import _PBTTrialState

    from orchestrator.schedulers import FinalStepAwarePBT

    pbt = FinalStepAwarePBT(
        total_steps=120, metric="val/loss", mode="min", perturbation_interval=2,
        quantile_fraction=0.25, hyperparam_mutations={"lr": [0.1, 0.2]},
    )  # fmt: skip
    trials = {name: _FakeTrial(name) for name in steps}
    for name, trial in trials.items():
        state = _PBTTrialState(trial)
        state.last_score = -scores[name]  # PBT stores max-is-better scores
        state.last_result = {"step": steps[name], "val/loss": scores[name]}
        pbt._trial_state[trial] = state
    return pbt, trials


def test_pbt_donors_still_have_steps_to_train() -> None:
    # the best trial is at its last step: cloning it would leave the target nothing to train
    pbt, trials = _pbt_with(
        {"best": 120, "good": 60, "fair": 60, "worst": 60},
        {"best": 0.1, "good": 0.2, "fair": 0.3, "worst": 0.9},
    )
    assert pbt._quantiles() == ([], [])  # no donor: nobody is exploited
    pbt, trials = _pbt_with(
        {"best": 60, "good": 60, "fair": 60, "worst": 120},
        {"best": 0.1, "good": 0.2, "fair": 0.3, "worst": 0.9},
    )
    assert pbt._quantiles() == ([trials["worst"]], [trials["best"]])  # a finished target is fine
