"""MLflow tracking against a real ``mlflow server`` (and a local sqlite store), and the Tune
callback in a real Ray Tune run. No mocks of MLflow: every check reads back what was stored."""

from __future__ import annotations

import json
import os
import pickle
import sys
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from orchestrator.run_layout import contract_metrics, decode_param, encode_param
from orchestrator.tracking import SweepTracker
from orchestrator.tracking_uri import (
    TrackingUnreachableError,
    check_reachable,
    resolve_tracking_uri,
)
from orchestrator.tune_callbacks import MLflowTuneCallback, build_trial_table, trial_params

PARAMS = {
    "quant.scheme": "ternary",
    "quant.weight_bits": 2,
    "quant.act_bits": None,
    "train.lr": 0.003,
    "train.steps": 30,
    "model.subln": True,
    "growth.strategy": ["depth", "width"],
}


def tune_result(step: int, loss: float, **extra: Any) -> dict[str, Any]:
    """A result as Tune hands it to callbacks: contract metrics plus Tune's bookkeeping."""
    return {
        "val/loss": loss,
        "loss/quant": 0.1 * step,
        "model/bits_total": 1000.0 + step,
        "step": step,
        "training_iteration": step,
        "time_this_iter_s": 0.01,
        "trial_id": "ignored",
        "done": False,
        "config": {"run_config": PARAMS},
        **extra,
    }


def new_tracker(uri: str, **kwargs: Any) -> SweepTracker:
    kwargs.setdefault("objectives", [("val/loss", "min"), ("model/bits_total", "min")])
    return SweepTracker(f"sweep-{uuid.uuid4().hex[:8]}", tracking_uri=uri, **kwargs)


def children(tracker: SweepTracker) -> dict[str, Any]:
    """The parent's child runs by trial id, read back from MLflow."""
    from mlflow import MlflowClient

    runs = MlflowClient(tracker.uri).search_runs(
        [tracker.experiment_id], f"tags.mlflow.parentRunId = '{tracker.parent_run_id}'"
    )
    return {r.data.tags["bitsweep.trial_id"]: r for r in runs}


def steps_of(uri: str, run_id: str, key: str) -> list[int]:
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def write_packed_checkpoint(directory: Path) -> Path:
    packed = directory / "packed"
    packed.mkdir(parents=True)
    (packed / "model.safetensors").write_bytes(b"\x00" * 64)
    (packed / "manifest.json").write_text(json.dumps({"packing": "base3"}))
    return directory


# ---- without a server ------------------------------------------------------------------------


def test_contract_metrics_keep_slashed_names_and_step_only() -> None:
    result = tune_result(5, 1.5, **{"perf/tokens_per_s": 10, "checkpoint_path": "/x"})
    assert contract_metrics(result) == {
        "val/loss": 1.5,
        "loss/quant": 0.5,
        "model/bits_total": 1005.0,
        "perf/tokens_per_s": 10.0,
        "step": 5.0,
    }


def test_params_encode_as_text_and_decode_back() -> None:
    for value in PARAMS.values():
        assert decode_param(encode_param(value)) == value
    assert encode_param("ternary") == "ternary" and encode_param(True) == "true"
    assert trial_params({"run_config": {"a.b": 1}, "other": 2}) == {"a.b": 1}
    assert trial_params({"train": {"lr": 0.1}}) == {"train.lr": 0.1}


def test_tracking_uri_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert resolve_tracking_uri() == "http://127.0.0.1:1"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_unreachable_server_is_named_before_anything_is_logged() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(
        TrackingUnreachableError, match=f"{uri} is unreachable.*MLFLOW_TRACKING_URI"
    ):
        check_reachable(uri, timeout=2)
    with pytest.raises(TrackingUnreachableError, match=uri):
        SweepTracker("s", tracking_uri=uri).start()


def test_unusable_sqlite_path_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"
    with pytest.raises(TrackingUnreachableError, match=f"{uri} cannot be created"):
        check_reachable(uri)
    check_reachable(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")  # creatable: fine


@pytest.mark.slow
def test_default_sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = SweepTracker("local", objectives=[("val/loss", "min")])
    tracker.start()
    tracker.trial_started("t0", PARAMS)
    tracker.log_result("t0", tune_result(10, 2.0))
    tracker.log_result("t0", tune_result(20, 1.0))
    tracker.trial_finished("t0")
    summary = tracker.finish()
    assert (tmp_path / "mlflow.db").exists()
    run = children(tracker)["t0"]
    assert run.info.status == "FINISHED" and run.data.params["train.steps"] == "30"
    assert steps_of(tracker.uri, run.info.run_id, "val/loss") == [10, 20]
    assert summary.best_trial["best"]["val/loss"]["trial_id"] == "t0"


# ---- against a real mlflow server ------------------------------------------------------------


@pytest.mark.slow
def test_parent_children_params_metrics_and_statuses(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    tracker = new_tracker(
        mlflow_server, preset="demo", sweep_yaml="name: x\n", search_space={"train.lr": "log"}
    )
    parent_id = tracker.start()
    assert not tracker.resumed
    for trial in ("t0", "t1", "t2", "t3"):
        tracker.trial_started(trial, {**PARAMS, "train.seed": int(trial[1])})
    for step, loss in ((10, 3.0), (20, 2.0), (30, 1.0)):
        tracker.log_result("t0", tune_result(step, loss))
    tracker.set_checkpoint("t0", str(write_packed_checkpoint(tmp_path / "ckpt")))
    assert tracker.trial_finished("t0") == "finished"
    tracker.log_result("t1", tune_result(10, 5.0))
    tracker.mark_stopped_early("t1")
    assert tracker.trial_finished("t1") == "stopped_early"
    train_v2 = {"checkpoint_path": str(write_packed_checkpoint(tmp_path / "v2"))}  # a string
    tracker.log_result("t2", tune_result(10, 4.0, done=True, **train_v2))  # ASHA stopped it
    assert tracker.trial_finished("t2") == "stopped_early"
    tracker.log_result("t3", tune_result(10, 4.0))
    tracker.trial_failed("t3", "ValueError: loss is nan", details="Traceback ...\nValueError")

    client = MlflowClient(mlflow_server)
    parent = client.get_run(parent_id)
    assert parent.info.run_name == tracker.sweep
    tags = parent.data.tags
    assert tags["bitsweep.role"] == "sweep" and tags["bitsweep.sweep"] == tracker.sweep
    assert tags["bitsweep.preset"] == "demo" and tags["bitsweep.version"]
    assert json.loads(tags["bitsweep.objectives"]) == [
        ["val/loss", "min"],
        ["model/bits_total", "min"],
    ]
    top = {f.path for f in client.list_artifacts(parent_id)}
    assert {"sweep.yaml", "search_space.json"} <= top

    runs = children(tracker)
    assert sorted(runs) == ["t0", "t1", "t2", "t3"]
    t0 = runs["t0"]
    assert t0.info.run_name == "t0" and t0.data.tags["mlflow.parentRunId"] == parent_id
    assert (
        t0.data.tags["bitsweep.role"] == "trial" and t0.data.tags["bitsweep.sweep"] == tracker.sweep
    )
    assert t0.data.params == {**{k: encode_param(v) for k, v in PARAMS.items()}, "train.seed": "0"}
    assert set(t0.data.metrics) == {"val/loss", "loss/quant", "model/bits_total", "step"}
    assert steps_of(mlflow_server, t0.info.run_id, "val/loss") == [10, 20, 30]
    packed = {f.path for f in client.list_artifacts(t0.info.run_id, "model/packed")}
    assert packed == {"model/packed/model.safetensors", "model/packed/manifest.json"}

    status = {t: (r.info.status, r.data.tags["bitsweep.status"]) for t, r in runs.items()}
    assert status == {
        "t0": ("FINISHED", "finished"),
        "t1": ("FINISHED", "stopped_early"),
        "t2": ("FINISHED", "stopped_early"),
        "t3": ("FAILED", "failed"),
    }
    assert runs["t3"].data.tags["bitsweep.error"] == "ValueError: loss is nan"
    assert not client.list_artifacts(runs["t1"].info.run_id, "model")  # no checkpoint, no model
    assert len(client.list_artifacts(runs["t2"].info.run_id, "model/packed")) == 2


@pytest.mark.slow
def test_finish_writes_tables_matrices_front_and_best(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    tracker = new_tracker(mlflow_server)
    tracker.start()
    losses = {("ternary", 0): 1.0, ("ternary", 1): 1.2, ("lsq", 0): 0.8, ("lsq", 1): 0.6}
    for i, ((scheme, seed), loss) in enumerate(losses.items()):
        trial = f"t{i}"
        tracker.trial_started(trial, {**PARAMS, "quant.scheme": scheme, "train.seed": seed})
        tracker.log_result(trial, tune_result(10, loss + 1, **{"model/bits_total": 100.0 * i}))
        tracker.log_result(trial, tune_result(30, loss, **{"model/bits_total": 100.0 * i}))
        tracker.trial_finished(trial)
    tracker.trial_started("t9", {**PARAMS, "quant.scheme": "lsq", "train.seed": 0})
    tracker.trial_failed("t9", "RuntimeError: worker died")
    ablations = [
        {
            "name": "scheme_by_seed",
            "rows": "quant.scheme",
            "cols": "train.seed",
            "value": "val/loss",
        },
        {"name": "by_scheme", "rows": "quant.scheme", "cols": None, "value": "val/loss"},
        {"name": "typo", "rows": "quant.schem", "cols": "train.seed", "value": "val/loss"},
    ]
    summary = tracker.finish(ablations=ablations)

    table = summary.trial_table
    assert list(table["trial_id"]) == ["t0", "t1", "t2", "t3", "t9"]
    assert list(table.columns[:4]) == ["trial_id", "run_id", "status", "error"]
    assert table.loc[0, "growth.strategy"] == ["depth", "width"]  # typed, not MLflow's text
    assert table.loc[0, "val/loss"] == 1.0 and table.loc[0, "best/val/loss"] == 1.0
    assert table.set_index("trial_id").loc["t9", "error"] == "RuntimeError: worker died"
    mean, _ = summary.ablations["scheme_by_seed"]
    assert mean.shape == (2, 2) and mean.loc["lsq", 1] == 0.6  # t9 failed: no value, no cell
    assert len(summary.warnings) == 1 and "'quant.schem' is not a column" in summary.warnings[0]
    # Both objectives are minimized: t0 has the fewest bits, t3 the lowest loss; t9 failed.
    assert sorted(summary.pareto_front["trial_id"]) == ["t0", "t2", "t3"]
    assert summary.best_trial["best"]["val/loss"]["trial_id"] == "t3"
    assert summary.get("pareto") is summary.pareto_front

    client = MlflowClient(mlflow_server)
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["bitsweep.status"] == "finished"
    listed = {f.path for d in ("", "ablation", "pareto") for f in client.list_artifacts(
        tracker.parent_run_id, d or None)}  # fmt: skip
    expected = {
        "trials.parquet",
        "best_trial.json",
        "ablation/scheme_by_seed.parquet",
        "ablation/scheme_by_seed.csv",
        "ablation/scheme_by_seed.png",
        "ablation/by_scheme.parquet",
        "pareto/front.parquet",
        "pareto/front.csv",
        "pareto/front.png",
    }
    assert expected <= listed and set(summary.artifacts) == {p for p in listed if "." in p}
    local = client.download_artifacts(tracker.parent_run_id, "trials.parquet", str(tmp_path))
    assert len(pd.read_parquet(local)) == 5
    local = client.download_artifacts(
        tracker.parent_run_id, "ablation/scheme_by_seed.parquet", str(tmp_path)
    )
    per_trial = pd.read_parquet(local)  # one row per trial
    assert len(per_trial) == 5 and {"trial_id", "quant.scheme", "train.seed"} <= set(per_trial)
    local = client.download_artifacts(
        tracker.parent_run_id, "ablation/scheme_by_seed_cells.parquet", str(tmp_path)
    )
    cells = pd.read_parquet(local)
    assert list(cells.columns) == ["quant.scheme", "train.seed", "mean", "std", "count"]
    assert len(cells) == 4


@pytest.mark.slow
def test_a_pbt_exploit_logs_the_new_lineage_from_the_donor_step(mlflow_server: str) -> None:
    tracker = new_tracker(mlflow_server)
    tracker.start()
    tracker.trial_started("target", PARAMS)
    assert [tracker.log_result("target", tune_result(s, 2.0)) for s in (10, 20, 30)][2] > 0
    # PBT restarts the target from the donor's checkpoint at step 10: 20 and 30 come again
    tracker.trial_started("target", PARAMS, exploited_from="donor")
    assert tracker.log_result("target", tune_result(20, 1.0)) > 0
    assert tracker.log_result("target", tune_result(30, 0.5)) > 0
    assert tracker.log_result("target", tune_result(30, 0.5)) == 0  # a replay is still skipped
    tracker.trial_finished("target")
    tracker.finish()
    run = children(tracker)["target"]
    assert run.data.tags["bitsweep.exploited_from"] == "donor"
    assert steps_of(tracker.uri, run.info.run_id, "val/loss") == [10, 20, 20, 30, 30]


@pytest.mark.slow
def test_restarted_tracker_reuses_runs_without_duplicates(mlflow_server: str) -> None:
    from mlflow import MlflowClient

    first = new_tracker(mlflow_server)
    parent_id = first.start()
    first.trial_started("a", PARAMS)
    first.trial_started("b", PARAMS)
    first.log_result("a", tune_result(10, 2.0))
    first.log_result("a", tune_result(20, 1.5))
    first.log_result("b", tune_result(10, 3.0))
    first.trial_finished("b")
    # The driver dies here; a new process builds the tracker again (or Tune unpickles it).
    second = pickle.loads(pickle.dumps(first))
    assert second.start() == parent_id and second.resumed
    second.trial_started("a", PARAMS)
    logged = [second.log_result("a", tune_result(s, 1.0 / s)) for s in (10, 20, 30)]
    assert logged[:2] == [0, 0] and logged[2] > 0  # replayed steps are skipped
    second.trial_finished("a")
    second.finish()
    third = SweepTracker(first.sweep, tracking_uri=mlflow_server, objectives=first.objectives)
    assert third.start() == parent_id  # found by its bitsweep.sweep tag

    client = MlflowClient(mlflow_server)
    parents = client.search_runs(
        [first.experiment_id],
        f"tags.`bitsweep.sweep` = '{first.sweep}' and tags.`bitsweep.role` = 'sweep'",
    )
    assert len(parents) == 1
    runs = children(first)
    assert sorted(runs) == ["a", "b"]
    assert steps_of(mlflow_server, runs["a"].info.run_id, "val/loss") == [10, 20, 30]
    assert runs["a"].data.tags["bitsweep.status"] == "finished"
    table = third.trial_table()  # a fresh tracker reads params back from MLflow's text
    assert table.set_index("trial_id").loc["a", "best/val/loss"] == pytest.approx(1 / 30)
    assert table.loc[0, "growth.strategy"] == ["depth", "width"]
    assert table["model.subln"].tolist() == [True, True]


# ---- the Tune callback in a real Tune run ----------------------------------------------------


def tiny_trainable(config: dict[str, Any]) -> None:
    """val/loss = (x-3)^2 + 1/step; fails at step 2 while ``fail_flag`` exists (for x == 4)."""
    import tempfile

    from ray import tune

    run = config["run_config"]
    x, steps = run["train.x"], run["train.steps"]
    for step in range(1, steps + 1):
        if x == 4 and step == 2 and os.path.exists(config["fail_flag"]):
            raise ValueError(f"boom at x={x}")
        metrics = {"val/loss": (x - 3) ** 2 + 1 / step, "loss/quant": 0.1 * step, "step": step}
        if step < steps:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            write_packed_checkpoint(Path(tmp))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


@pytest.mark.slow
def test_tune_callback_logs_every_trial_and_resume_adds_no_duplicates(
    ray_session: Any, mlflow_server: str, tmp_path: Path
) -> None:
    import ray
    from mlflow import MlflowClient
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack tests/
    flag = tmp_path / "fail"
    flag.write_text("fail while this file exists")
    tracker = new_tracker(mlflow_server, objectives=[("val/loss", "min")])
    trainable = tune.with_resources(tiny_trainable, {"cpu": 0, "trial_slot": 1})
    # In order, one at a time: x=3 runs its 4 steps, x=10 is far worse at step 1 and ASHA stops
    # it, x=4 fails at step 2.
    tuner = tune.Tuner(
        trainable,
        param_space={
            "run_config": {"train.x": tune.grid_search([3, 10, 4]), "train.steps": 4},
            "fail_flag": str(flag),
        },
        tune_config=tune.TuneConfig(
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                metric="val/loss",
                mode="min",
                max_t=4,
                grace_period=1,
                reduction_factor=2,
            ),
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(
            name="callback",
            storage_path=str(tmp_path / "ray"),
            verbose=0,
            callbacks=[MLflowTuneCallback(tracker, strict=True)],
        ),
    )
    grid = tuner.fit()
    ids = {r.config["run_config"]["train.x"]: r.metrics["trial_id"] for r in grid}
    from_tune = build_trial_table(grid, [("val/loss", "min")]).set_index("trial_id")
    assert from_tune.loc[ids[3], "best/val/loss"] == 0.25 and from_tune.loc[ids[3], "step"] == 4
    assert from_tune.loc[ids[4], "status"] == "failed"
    runs = children(tracker)
    assert sorted(runs) == sorted(ids.values())
    by_x = {x: runs[trial] for x, trial in ids.items()}
    status = {x: (r.info.status, r.data.tags["bitsweep.status"]) for x, r in by_x.items()}
    assert status == {
        3: ("FINISHED", "finished"),
        10: ("FINISHED", "stopped_early"),
        4: ("FAILED", "failed"),
    }
    assert by_x[4].data.tags["bitsweep.error"] == "ValueError: boom at x=4"
    assert steps_of(mlflow_server, by_x[3].info.run_id, "val/loss") == [1, 2, 3, 4]
    assert steps_of(mlflow_server, by_x[3].info.run_id, "loss/quant") == [1, 2, 3, 4]
    assert steps_of(mlflow_server, by_x[10].info.run_id, "val/loss") == [1]
    assert steps_of(mlflow_server, by_x[4].info.run_id, "val/loss") == [1]
    assert by_x[3].data.params == {"train.x": "3", "train.steps": "4"}
    assert "training_iteration" not in by_x[3].data.metrics
    client = MlflowClient(mlflow_server)
    packed = {f.path for f in client.list_artifacts(by_x[3].info.run_id, "model/packed")}
    assert packed == {"model/packed/model.safetensors", "model/packed/manifest.json"}

    # Resume the errored trial: Tune brings back its pickled callback (tuner.pkl), which finds
    # the same parent and child runs and skips the steps already logged.
    flag.unlink()
    restored = tune.Tuner.restore(
        str(tmp_path / "ray" / "callback"), trainable, resume_errored=True
    )
    restored.fit()
    runs = children(tracker)
    assert sorted(runs) == sorted(ids.values())  # no new runs
    x4 = runs[ids[4]]
    assert x4.info.status == "FINISHED" and "bitsweep.error" not in x4.data.tags
    steps = steps_of(mlflow_server, x4.info.run_id, "val/loss")
    assert steps == sorted(set(steps)) and steps[0] == 1 and len(steps) >= 2
    assert steps_of(mlflow_server, runs[ids[3]].info.run_id, "val/loss") == [1, 2, 3, 4]


def test_artifacts_survive_mixed_type_params(tmp_path: Path) -> None:
    from orchestrator.sweep_artifacts import write_sweep_artifacts

    table = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c"],
            "run_id": ["1", "2", "3"],
            "status": ["finished", "finished", "failed"],
            "error": [None, None, "boom"],
            "quant.act_signed": ["auto", True, False],  # bool | "auto" in one column
            "growth.strategy": [["depth"], ["width", "depth"], None],
            "val/loss": [1.0, 2.0, float("nan")],
            "model/bits_total": [200.0, 100.0, 50.0],
        }
    )
    objectives = [("val/loss", "min"), ("model/bits_total", "min")]
    ablations = [{"name": "signed", "rows": "quant.act_signed", "cols": None, "value": "val/loss"}]
    out = write_sweep_artifacts(tmp_path, table, ablations, objectives)
    assert sorted(out["artifacts"]) == sorted(
        [
            "trials.parquet",
            "ablation/signed.parquet",
            "ablation/signed.csv",
            "ablation/signed_cells.parquet",
            "ablation/signed_cells.csv",
            "ablation/signed.png",
            "pareto/front.parquet",
            "pareto/front.csv",
            "pareto/front.png",
            "best_trial.json",
        ]
    )
    stored = pd.read_parquet(tmp_path / "trials.parquet")
    assert stored["quant.act_signed"].tolist() == ["auto", "true", "false"]
    assert [list(v) for v in stored["growth.strategy"][:2]] == [["depth"], ["width", "depth"]]
    assert sorted(out["pareto_front"]["trial_id"]) == ["a", "b"]  # c failed: not on the front
    best = json.loads((tmp_path / "best_trial.json").read_text())
    assert best["best"]["val/loss"]["trial_id"] == "a"
    assert best["best"]["model/bits_total"]["trial_id"] == "b"
    assert [p["trial_id"] for p in best["pareto_front"]] == ["a", "b"]
