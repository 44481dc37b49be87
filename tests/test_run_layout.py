"""The MLflow run layout (orchestrator.run_layout) against a real local sqlite store that the real
``SweepTracker`` wrote: the names, statuses and paths it declares are the ones on the runs, the
listing pages through every child run, and the trial table the tracker writes is the one the
results API reads back. No mocks: every check reads what MLflow stored."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from handmade_sweeps import ABLATION, OBJECTIVES, Handmade, write_sweep
from hypothesis import given
from hypothesis import strategies as st

from orchestrator import run_layout as layout
from orchestrator.results import load_sweep_results
from orchestrator.tracking import SweepTracker


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Handmade:
    return write_sweep(f"sqlite:///{tmp_path_factory.mktemp('layout') / 'mlflow.db'}")


@pytest.fixture(scope="module")
def client(made: Handmade) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(made.uri)


def _experiment_id(client: Any, made: Handmade) -> str:
    return client.get_experiment_by_name(made.experiment).experiment_id


# ---- encoding (no store) -------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=10,
)


@given(JSON_VALUES.filter(lambda v: not isinstance(v, str)))
def test_a_non_text_param_decodes_to_what_was_encoded(value: Any) -> None:
    assert layout.decode_param(layout.encode_param(value)) == value


@given(st.text(max_size=40))
def test_a_text_param_is_logged_as_is(value: str) -> None:
    assert layout.encode_param(value) == value[: layout.MAX_PARAM_VALUE]


def test_a_long_param_is_cut_to_mlflows_limit() -> None:
    assert len(layout.encode_param(list(range(5000)))) == layout.MAX_PARAM_VALUE


@given(st.lists(st.floats(allow_nan=True, allow_infinity=False), max_size=20), st.booleans())
def test_best_value_ignores_nan_and_follows_the_mode(values: list[float], maximize: bool) -> None:
    mode = "max" if maximize else "min"
    finite = [v for v in values if not math.isnan(v)]
    best = layout.best_value(values, mode)
    if not finite:
        assert math.isnan(best)
    else:
        assert best == (max(finite) if maximize else min(finite))


@given(st.lists(st.tuples(st.text(min_size=1, max_size=6), st.sampled_from(["min", "max"]))))
def test_objectives_tag_round_trip(objectives: list[tuple[str, str]]) -> None:
    assert layout.decode_objectives(layout.encode_objectives(objectives)) == objectives


def test_an_unreadable_objectives_tag_reads_as_none() -> None:
    assert layout.decode_objectives("not json") == [] and layout.decode_objectives(None) == []


def test_contract_metrics_keep_numbers_under_slashed_keys_and_cut_long_keys() -> None:
    long = "x/" + "k" * 300
    result = {"val/acc": 0.5, "flag/on": True, "note/text": "hi", "step": 3, long: 1, "iter": 1}
    metrics = layout.contract_metrics(result)
    assert metrics == {"val/acc": 0.5, "step": 3.0, long[: layout.MAX_KEY]: 1.0}


def test_parent_filter_refuses_quotes() -> None:
    with pytest.raises(ValueError, match="quote"):
        layout.parent_filter(layout.TAG_SWEEP, "a'b")


def test_completed_drops_failed_rows_only() -> None:
    table = pd.DataFrame({"status": list(layout.STATUSES)})
    assert list(layout.completed(table)["status"]) == [
        s for s in layout.STATUSES if s != layout.FAILED
    ]


# ---- what the tracker wrote ----------------------------------------------------------------------


def test_the_runs_carry_the_declared_tags_and_statuses(made: Handmade, client: Any) -> None:
    parent = client.get_run(made.parent_run_id)
    tags = parent.data.tags
    assert tags[layout.TAG_ROLE] == layout.ROLE_SWEEP and tags[layout.TAG_SWEEP] == made.name
    assert tags[layout.TAG_STATUS] == layout.FINISHED
    assert layout.decode_objectives(tags[layout.TAG_OBJECTIVES]) == OBJECTIVES
    children = layout.child_runs(client, _experiment_id(client, made), made.parent_run_id)
    for run in children:
        trial = made.trials[run.data.tags[layout.TAG_TRIAL_ID]]
        assert run.data.tags[layout.TAG_ROLE] == layout.ROLE_TRIAL
        assert run.data.tags[layout.PARENT_RUN_TAG] == made.parent_run_id
        assert run.data.tags[layout.TAG_STATUS] == trial.status
        assert run.data.tags.get(layout.TAG_ERROR) == trial.error
        assert run.data.params == {
            k: layout.encode_param(v) for k, v in trial.params.items()
        }  # the params as encoded
    assert {r.data.tags[layout.TAG_STATUS] for r in children} <= set(layout.STATUSES)


def test_the_parent_holds_the_declared_artifact_paths(made: Handmade, client: Any) -> None:
    from orchestrator.sweep_artifacts import ParentArtifacts

    files = ParentArtifacts(client, made.parent_run_id)
    root = set(files.paths())
    assert {layout.SWEEP_YAML, layout.SEARCH_SPACE_JSON, layout.TRIALS_TABLE} <= root
    assert layout.BEST_TRIAL_JSON in root
    name = ABLATION["name"]
    assert f"{layout.ABLATION_DIR}/{name}{layout.CELLS_SUFFIX}" in files.paths(layout.ABLATION_DIR)
    assert layout.PARETO_FRONT in files.paths(layout.PARETO_FRONT.rsplit("/", 1)[0])
    failed = next(t for t in made.trials.values() if t.status == layout.FAILED)
    assert files.text(layout.BEST_TRIAL_JSON) is not None
    best = json.loads(files.text(layout.BEST_TRIAL_JSON) or "{}")
    # a failed trial's partial metrics (val/acc 0.99) never make it the best
    assert all(entry["trial_id"] != failed.trial_id for entry in best["best"].values())


def test_child_runs_pages_through_every_trial_in_order(
    made: Handmade, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layout, "PAGE_SIZE", 2)  # 13 trials: seven pages
    runs = layout.child_runs(client, _experiment_id(client, made), made.parent_run_id)
    assert [r.data.tags[layout.TAG_TRIAL_ID] for r in runs] == sorted(made.trials)
    assert {r.info.run_id for r in runs} == {t.run_id for t in made.trials.values()}


def test_newest_parent_and_lookup_by_name_id_or_trial(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old = SweepTracker("twice", tracking_uri=uri, reuse=False)
    old.start()
    new = SweepTracker("twice", tracking_uri=uri, reuse=False, tags={layout.TAG_SWEEP_ID: "id-2"})
    new.start()
    new.trial_started("t0", {"train.lr": 0.1})
    client = MlflowClient(uri)
    experiment = new.experiment_id
    newest = layout.newest_parent(client, experiment, layout.TAG_SWEEP, "twice")
    assert newest is not None and newest.info.run_id == new.parent_run_id
    by_id = layout.newest_parent(client, experiment, layout.TAG_SWEEP_ID, "id-2")
    assert by_id is not None and by_id.info.run_id == new.parent_run_id
    assert layout.newest_parent(client, experiment, layout.TAG_SWEEP, "other") is None
    assert layout.sweep_names(client, experiment) == ["twice"]

    def find(sweep: str, name: str = layout.DEFAULT_EXPERIMENT) -> str:
        return layout.find_sweep_parent(client, uri, name, sweep).info.run_id

    assert find("twice") == find("id-2") == new.parent_run_id
    assert find(old.parent_run_id, "elsewhere") == old.parent_run_id  # an id: any experiment
    trial_run = new._trials["t0"].run_id
    with pytest.raises(layout.SweepLookupError, match=f"parent run id {new.parent_run_id}"):
        find(trial_run)
    with pytest.raises(layout.SweepLookupError, match=r"named 'nope'.*sweeps there: twice"):
        find("nope")
    with pytest.raises(layout.SweepLookupError, match="experiment 'absent' does not exist"):
        find("twice", "absent")


def test_trial_table_rows_types_and_best_columns(made: Handmade, client: Any) -> None:
    runs = layout.child_runs(client, _experiment_id(client, made), made.parent_run_id)
    seen: list[tuple[str, str]] = []

    def best(run: Any, metric: str, mode: str) -> float:
        seen.append((run.data.tags[layout.TAG_TRIAL_ID], metric))
        points = layout.metric_history(client, run.info.run_id, metric)
        return layout.best_value([v for _, v in points], mode)

    table = layout.trial_table(runs, OBJECTIVES, best=best)
    params = sorted(made.trials["t00"].params)
    metrics = sorted({"step", *(m for t in made.trials.values() for m in t.history)})
    best_cols = [f"{layout.BEST_PREFIX}{m}" for m, _ in OBJECTIVES]
    assert list(table.columns) == [*layout.TABLE_KEYS, *params, *metrics, *best_cols]
    assert len(seen) == len(made.trials) * len(OBJECTIVES)
    assert table["model.subln"].dtype == bool and table["train.seed"].dtype == "int64"  # decoded
    by_id = table.set_index("trial_id")
    for trial in made.trials.values():
        row = by_id.loc[trial.trial_id]
        assert row["error"] == trial.error  # None, not NaN, for a trial without an error
        assert row["model.subln"] == trial.params["model.subln"]
        values = [v for _, v in trial.history["val/acc"]]
        assert row["best/val/acc"] == pytest.approx(max(values))
        assert row["val/acc"] == pytest.approx(trial.final("val/acc"))  # the final value
    # without a best function the columns exist, empty (the results API fills them in parallel)
    assert layout.trial_table(runs, OBJECTIVES)["best/val/acc"].isna().all()
    empty = layout.trial_table([], OBJECTIVES)
    assert empty.empty and list(empty.columns) == [*layout.TABLE_KEYS, *best_cols]


def test_metric_histories_serial_and_parallel_agree(made: Handmade, client: Any) -> None:
    pairs = [(t.run_id, "val/acc") for t in made.trials.values()]
    serial = layout.metric_histories(client, pairs)
    parallel = layout.metric_histories(client, [*pairs, *pairs], parallel=True)
    assert serial == parallel and len(serial) == len(pairs)
    for trial in made.trials.values():
        assert serial[(trial.run_id, "val/acc")] == [(s, pytest.approx(v)) for s, v in
                                                      trial.history["val/acc"]]  # fmt: skip


def test_the_tracker_and_the_results_api_build_the_same_table(tmp_path: Path) -> None:
    """What the tracker writes as trials.parquet (its in-process records: typed params, the best
    values it saw) is the table the results API rebuilds from MLflow."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker("same", tracking_uri=uri, reuse=False, objectives=OBJECTIVES)
    for i, status in enumerate([layout.FINISHED, layout.STOPPED_EARLY, layout.FAILED]):
        params = {"train.lr": 0.1 * (i + 1), "quant.scheme": ["lsq", "ternary"][i % 2],
                  "train.steps": 3, "model.subln": bool(i % 2), "quant.act_bits": None}  # fmt: skip
        tracker.trial_started(f"t{i}", params)
        for step, acc in enumerate([0.5, 0.9 - 0.1 * i, 0.7], start=1):
            if status == layout.FAILED and step > 1:
                break
            result = {"val/acc": acc, "model/bits_total": 100.0 * step - i, "step": step}
            tracker.log_result(f"t{i}", result)
        if status == layout.FAILED:
            tracker.trial_failed(f"t{i}", "ValueError: loss is nan")
        else:
            tracker.trial_finished(f"t{i}", stopped_early=status == layout.STOPPED_EARLY)
    written = tracker.trial_table()
    read = load_sweep_results("same", tracking_uri=uri).trials
    pd.testing.assert_frame_equal(written, read)
    assert list(read["status"]) == [layout.FINISHED, layout.STOPPED_EARLY, layout.FAILED]
    assert list(read["best/val/acc"]) == pytest.approx([0.9, 0.8, 0.5])  # over each history


def test_write_status_tags_and_ends_a_run(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker("status", tracking_uri=uri, reuse=False)
    tracker.start()
    run_id = tracker.trial_started("t0", {})
    client = MlflowClient(uri)
    layout.write_status(client, run_id, layout.INTERRUPTED, run_status="KILLED", error="x" * 9000)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags[layout.TAG_STATUS] == layout.INTERRUPTED
    assert run.data.tags[layout.TAG_ERROR] == "x" * layout.MAX_TAG_VALUE
    layout.write_status(client, run_id, layout.RUNNING, run_status="RUNNING")
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags[layout.TAG_STATUS] == layout.RUNNING
