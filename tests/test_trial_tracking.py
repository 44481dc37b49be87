"""One trial's record as the tracker keeps it: params shared across trials, and what MLflow
keeps of an ended run (issue 17: the driver holds nothing per ended trial it can drop)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.tracking import SweepTracker
from orchestrator.trial_tracking import params_view, release_artifact_repo

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.sampled_from("ab")
)
PARAMS = st.dictionaries(st.sampled_from([f"k{i}" for i in range(8)]), VALUES, max_size=8)


@given(first=PARAMS, others=st.lists(PARAMS, max_size=5))
def test_a_view_reads_exactly_its_own_params(first: dict, others: list[dict]) -> None:
    base: dict[str, Any] = {}
    views = [params_view(p, base) for p in [first, *others]]
    for params, view in zip([first, *others], views, strict=True):
        assert dict(view) == params or _same_nans(dict(view), params)
        assert {k: type(v) for k, v in view.items()} == {k: type(v) for k, v in params.items()}


def _same_nans(a: dict, b: dict) -> bool:
    """Equal, counting NaN equal to NaN (``==`` does not)."""
    return a.keys() == b.keys() and all(a[k] == b[k] or a[k] != a[k] == b[k] != b[k] for k in a)


def test_trials_share_the_base_and_keep_only_what_differs() -> None:
    base: dict[str, Any] = {}
    common = {f"model.k{i}": i for i in range(100)}
    first = params_view({**common, "train.lr": 0.1}, base)
    second = params_view({**common, "train.lr": 0.2, "model.k3": 3.0}, base)
    assert first.maps[0] == {} and second.maps[0] == {"train.lr": 0.2, "model.k3": 3.0}
    assert second.maps[1] is base and second["model.k3"] == 3.0 and second["model.k4"] == 4
    # a trial without one of the base's keys is kept whole: the view would invent its value
    assert params_view({"train.lr": 0.3}, base) == {"train.lr": 0.3}
    assert params_view({}, base) == {}


@pytest.mark.slow
def test_ended_trials_leave_nothing_behind_in_mlflow_client_or_records(tmp_path: Path) -> None:
    """An ended trial's run has no cached artifact repository (each holds a thread pool and a
    queue, for up to 1,024 runs) and its record keeps only its own params; the run's
    artifacts and params are all in MLflow."""
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service import utils

    tracker = SweepTracker(
        f"sweep-{uuid.uuid4().hex[:8]}",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        objectives=[("val/loss", "min")],
    )
    tracker.start()
    common = {f"model.k{i}": i for i in range(60)}
    for i in range(6):
        trial = f"t{i}"
        tracker.trial_started(trial, {**common, "train.lr": i / 10, "train.steps": 10})
        tracker.log_result(trial, {"val/loss": 1.0 / (i + 1), "step": 10})
        if i % 3 == 2:
            tracker.trial_failed(trial, "ValueError: nan", details="Traceback ...")
        else:
            tracker.trial_finished(trial)
    runs = {t: r.run_id for t, r in tracker._trials.items()}
    assert not set(runs.values()) & set(utils._artifact_repos_cache)
    for record in tracker._trials.values():
        assert record.params.maps[0].keys() <= {"train.lr"}  # type: ignore[attr-defined]
    client = MlflowClient(tracker.uri)
    failed = client.get_run(runs["t2"])
    assert failed.data.params["train.lr"] == "0.2" and failed.data.params["model.k59"] == "59"
    assert [a.path for a in client.list_artifacts(runs["t2"])] == ["error.txt"]
    table = tracker.trial_table().set_index("trial_id")
    assert table.loc["t4", "train.lr"] == 0.4 and table.loc["t4", "model.k7"] == 7


def test_releasing_a_run_without_a_cached_repository_is_a_no_op() -> None:
    release_artifact_repo("no-such-run")
