"""Reconciling the Optuna study with Tune's saved searcher state after a killed driver.

The searcher is saved (Tune's snapshot), then the study moves on: a trial is told complete and
another is asked. A restored plain ``OptunaSearch`` aborts on the first replayed report; the
reconciling one accepts it, keeps one result per trial and fails the orphan.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from orchestrator.reconcile import (
    RECONCILED_ATTR,
    ReconcilingOptunaSearch,
    fail_study_orphans,
    has_tune_state,
)

SPACE = {"lr": tune.uniform(0.0, 1.0)}


def _searcher(cls: type, db: Path) -> OptunaSearch:
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    searcher = cls(metric="loss", mode="min", study_name="s", storage=storage, seed=0)
    searcher.set_search_properties("loss", "min", SPACE)
    return searcher


def _killed_after_snapshot(cls: type, tmp_path: Path) -> tuple[Path, Path]:
    db, state = tmp_path / "optuna.db", tmp_path / "searcher-state.pkl"
    searcher = _searcher(cls, db)
    searcher.suggest("t1")
    searcher.on_trial_result("t1", {"loss": 1.0, "training_iteration": 1})
    searcher.suggest("t2")
    searcher.save(str(state))  # Tune's snapshot
    searcher.on_trial_complete("t1", {"loss": 0.5})  # the study is written at once...
    searcher.suggest("t3")  # ...and asked for a trial Tune never saved; then SIGKILL
    return db, state


def test_plain_optuna_search_aborts_on_a_replayed_report(tmp_path: Path) -> None:
    db, state = _killed_after_snapshot(OptunaSearch, tmp_path)
    restored = _searcher(OptunaSearch, db)
    restored.restore(str(state))
    with pytest.raises(UpdateFinishedTrialError):
        restored.on_trial_result("t1", {"loss": 0.9, "training_iteration": 2})


def test_reconciled_search_finishes_with_one_result_per_trial(tmp_path: Path) -> None:
    db, state = _killed_after_snapshot(ReconcilingOptunaSearch, tmp_path)
    restored = _searcher(ReconcilingOptunaSearch, db)
    restored.restore(str(state))
    assert restored.reconciled.ahead == ["t1"] and restored.reconciled.orphans == [2]
    # Tune reruns t1 (its state said running): its reports and completion are absorbed
    restored.on_trial_result("t1", {"loss": 0.9, "training_iteration": 2})
    restored.on_trial_complete("t1", {"loss": 0.4})
    restored.on_trial_result("t2", {"loss": 0.7, "training_iteration": 1})
    restored.on_trial_complete("t2", {"loss": 0.6})
    restored.suggest("t4")
    restored.on_trial_complete("t4", {"loss": 0.3})
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 3 and TrialState.RUNNING not in states
    assert [t.value for t in trials if t.number == 0] == [0.5]  # t1 told once, first result kept
    orphan = next(t for t in trials if t.number == 2)
    assert orphan.state == TrialState.FAIL and RECONCILED_ATTR in orphan.user_attrs


def test_study_of_a_sweep_killed_before_any_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "optuna.db"
    searcher = _searcher(ReconcilingOptunaSearch, db)
    searcher.suggest("t1")
    assert not has_tune_state(str(tmp_path))
    assert fail_study_orphans(db, "s") == [0]
    (tmp_path / "experiment_state-2026.json").write_text("{}")
    assert has_tune_state(str(tmp_path))
