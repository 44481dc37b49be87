"""The Optuna handoff: early-stopped trials reach the study as PRUNED with their history."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune

from orchestrator.search import StudySearch, make_pruner, make_sampler


def _searcher(tmp_path: Path, total_steps: int = 100, **kwargs: object) -> StudySearch:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = StudySearch(
        total_steps=total_steps,
        metric="val/loss",
        mode="min",
        sampler=make_sampler(seed=0, n_startup_trials=2),
        study_name="s",
        storage=storage,
        **kwargs,
    )
    searcher.set_search_properties(None, None, {"run_config": {"train.lr": tune.uniform(0, 1)}})
    return searcher


def _report(searcher: StudySearch, trial_id: str, steps: list[int], values: list[float]) -> None:
    for i, (step, value) in enumerate(zip(steps, values, strict=True)):
        searcher.on_trial_result(
            trial_id, {"val/loss": value, "step": step, "training_iteration": i + 1}
        )


def test_stopped_trial_is_pruned_with_its_intermediate_values(tmp_path: Path) -> None:
    searcher = _searcher(tmp_path)
    assert searcher.suggest("t1") is not None
    assert searcher.suggest("t2") is not None
    _report(searcher, "t1", [25, 50, 75], [3.0, 2.5, 2.2])
    searcher.on_trial_complete("t1", {"val/loss": 2.0, "step": 100, "training_iteration": 4})
    _report(searcher, "t2", [25], [3.5])
    # the scheduler stopped t2 on its second result: Tune skips on_trial_result for it
    searcher.on_trial_complete("t2", {"val/loss": 3.4, "step": 50, "training_iteration": 2})

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    by_state = {t.state: t for t in study.trials}
    assert by_state[TrialState.COMPLETE].value == 2.0
    pruned = by_state[TrialState.PRUNED]  # not COMPLETE with a truncated value
    assert pruned.intermediate_values == {25: 3.5, 50: 3.4}


def test_error_is_fail_and_full_length_is_complete(tmp_path: Path) -> None:
    searcher = _searcher(tmp_path)
    searcher.suggest("t1")
    searcher.suggest("t2")
    searcher.on_trial_complete("t1", None, error=True)
    searcher.on_trial_complete("t2", {"val/loss": 1.0, "step": 100})
    states = sorted(t.state.name for t in searcher.study.trials)
    assert states == ["COMPLETE", "FAIL"]


def test_tpe_ranks_pruned_trials_behind_complete_ones(tmp_path: Path) -> None:
    # the ranking this handoff relies on, checked against Optuna's own TPE code: a complete trial
    # with a bad value still ranks before pruned trials with good values, and among pruned trials
    # the one stopped later ranks first
    from optuna.samplers._tpe.sampler import _split_trials

    searcher = _searcher(tmp_path)
    runs = {
        "shallow": ([25], 50, 0.1),
        "deep": ([25, 50], 75, 0.3),
        "done": ([25, 50, 75], 100, 9.0),
    }
    for trial_id, (steps, last_step, value) in runs.items():
        searcher.suggest(trial_id)
        _report(searcher, trial_id, steps, [value] * len(steps))
        searcher.on_trial_complete(trial_id, {"val/loss": value, "step": last_step})
    study = searcher.study
    number = {name: i for i, name in enumerate(runs)}
    below, _ = _split_trials(study, study.get_trials(deepcopy=False), n_below=2)
    assert {t.number for t in below} == {number["done"], number["deep"]}
    states = {t.number: t.state for t in study.trials}
    assert states[number["shallow"]] == states[number["deep"]] == TrialState.PRUNED


@pytest.mark.parametrize("kind", ["optuna-sh", "optuna-hyperband"])
def test_pruner_prunes_a_clearly_worse_trial(tmp_path: Path, kind: str) -> None:
    pruner = make_pruner(kind, min_resource=10, max_resource=100, reduction_factor=2)
    searcher = _searcher(tmp_path, pruner=pruner)
    for i in range(4):
        searcher.suggest(f"good{i}")
        for step in (10, 20, 40, 80):  # as OptunaPrunerScheduler does: report, then ask
            searcher.report(f"good{i}", {"val/loss": 1.0 - 0.01 * i, "step": step})
            assert not searcher.should_prune(f"good{i}") or i > 0
        searcher.on_trial_complete(f"good{i}", {"val/loss": 0.9, "step": 100})
    searcher.suggest("bad")
    decisions = []
    for step in (10, 20, 40, 80):
        searcher.report("bad", {"val/loss": 50.0, "step": step})
        decisions.append(searcher.should_prune("bad"))
    assert any(decisions)


def test_told_trials_are_let_go_and_the_searcher_state_stays_flat(tmp_path: Path) -> None:
    """Issue 17: the searcher keeps no handle on a trial the study has been told about (its
    state, pickled at every Tune snapshot, grew with the sweep); the study keeps them all,
    replayed reports are ignored and a restored searcher samples on."""
    from orchestrator.study import RUN_IDS, link_run

    searcher = _searcher(tmp_path, total_steps=100)
    searcher.suggest("long")  # runs throughout: its optuna.Trial reaches the study's cache
    sizes = []
    for i in range(24):
        trial_id = f"t{i}"
        searcher.suggest(trial_id)
        link_run(trial_id, f"run-{i}")
        _report(searcher, trial_id, [50], [1.0 + i])
        end = [
            ({"val/loss": 1.0, "step": 100}, False),  # COMPLETE
            ({"val/loss": 2.0, "step": 50}, False),  # PRUNED (stopped early)
            (None, True),  # FAIL
        ][i % 3]
        searcher.on_trial_complete(trial_id, *end)
        assert searcher.optuna_trial(trial_id) is None and trial_id not in RUN_IDS
        searcher.save(str(tmp_path / "searcher.pkl"))
        sizes.append((tmp_path / "searcher.pkl").stat().st_size)
    assert sizes[-1] - sizes[2] < 24 * 20, sizes  # the told trials' ids only, not their trials
    _report(searcher, "t0", [75], [0.5])  # Tune replays a told trial's result: ignored
    searcher.on_trial_complete("t0", {"val/loss": 0.5, "step": 100})
    states = [t.state.name for t in searcher.study.trials]
    assert states.count("COMPLETE") == states.count("PRUNED") == states.count("FAIL") == 8

    searcher.suggest("running")
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = _searcher(tmp_path)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert set(restored._ot_trials) == {"long", "running"}
    _report(restored, "long", [75], [0.7])
    restored.on_trial_complete("long", {"val/loss": 0.6, "step": 100})
    restored.on_trial_complete("running", {"val/loss": 0.1, "step": 100})
    assert restored.suggest("next") is not None
    trials = {t.number: t for t in restored.study.trials}
    assert len(trials) == 27 and trials[0].value == 0.6 and trials[0].intermediate_values[75] == 0.7
