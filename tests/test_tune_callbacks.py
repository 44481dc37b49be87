"""The Tune callback's reading of a trial: who PBT cloned it from."""

from __future__ import annotations

from types import SimpleNamespace

from orchestrator.tune_callbacks import exploited_from


def _trial(trial_id: str, checkpoint_metrics: dict | None) -> SimpleNamespace:
    restoring = None if checkpoint_metrics is None else SimpleNamespace(metrics=checkpoint_metrics)
    return SimpleNamespace(trial_id=trial_id, latest_checkpoint_result=restoring)


def test_a_trial_restarted_from_a_donors_checkpoint_names_the_donor() -> None:
    assert exploited_from(_trial("t1", {"trial_id": "t3", "step": 12})) == "t3"


def test_a_trial_restored_from_its_own_checkpoint_or_none_names_no_donor() -> None:
    assert exploited_from(_trial("t1", {"trial_id": "t1", "step": 12})) is None
    assert exploited_from(_trial("t1", None)) is None
    assert exploited_from(_trial("t1", {})) is None
