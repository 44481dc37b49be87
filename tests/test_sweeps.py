"""End-to-end sweeps on a real local Ray, logged to a real ``mlflow server`` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from orchestrator.runner import run_sweep
from orchestrator.spec import load_sweep
from search_spaces import preset_names

pytestmark = pytest.mark.slow

LM_TINY = ["model.d_model=32", "model.n_heads=2", "model.seq_len=32", "train.batch_size=8",
           "data.eval_batches=1"]  # fmt: skip
VISION_TINY = ["train.batch_size=32"]
# Per preset: overrides that keep it to two tiny trials (grids: two cells).
TINY: dict[str, list[str]] = {
    "demo": [*LM_TINY, "train.steps=8", "train.eval_every=4", "search.num_samples=2"],
    "bitnet-lm": [*LM_TINY, "model.n_layers=2", "train.steps=8", "train.eval_every=4",
                  "search.space.schedule.lambda_warmup_frac=null",
                  "search.space.model.rmsnorm_post_attn=null",
                  "search.space.scenario.values=[{label: BitLinear, set: {quant.scheme: ternary}},"
                  " {label: H-BitLinear, set: {quant.scheme: hadamard}}]"],
    "br-ablation": [*VISION_TINY, "train.steps=8", "train.eval_every=4",
                    "search.space.train.seed.values=[0]",
                    "search.space.scenario.values=[{label: W-only, set: {loss.lambda_br: 1.0}}, "
                    "{label: no BR, set: {loss.lambda_br: 0.0}}]"],
    "bit-budget": [*VISION_TINY, "train.steps=8", "train.eval_every=4", "search.num_samples=2"],
    "early-exit": [*LM_TINY, "train.steps=8", "train.eval_every=4", "search.num_samples=2"],
    "scaleup": [*LM_TINY, "model.d_model=16", "train.steps=12", "train.eval_every=4",
                "search.num_samples=2"],
}  # fmt: skip


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _sweep_runs(uri: str, experiment: str, sweep: str) -> tuple[Any, list[Any]]:
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`bitsweep.sweep` = '{sweep}'")
    parents = [r for r in runs if r.data.tags.get("bitsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("bitsweep.role") == "trial"]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    return parents[0], children


def _artifacts(uri: str, run_id: str, folder: str = "") -> set[str]:
    return {f.path for f in _client(uri).list_artifacts(run_id, folder)}


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_runs_tiny(
    preset: str, mlflow_server: str, ray_session: Any, tmp_path: Path
) -> None:
    if preset not in TINY:  # the bit LM, fine-tuning and mixed-precision presets
        pytest.skip(f"no tiny overrides for {preset} here: its own end-to-end test runs it")
    experiment = f"preset-{preset}"
    where = [f"tracking.uri={mlflow_server}", f"tracking.experiment={experiment}",
             f"storage.path={tmp_path}"]  # fmt: skip
    spec = load_sweep(preset, [*TINY[preset], *where])
    outcome = run_sweep(spec, stream=None)
    parent, children = _sweep_runs(mlflow_server, experiment, preset)
    assert len(children) == 2 and len(outcome.trials) == 2 and outcome.failed == 0
    client = _client(mlflow_server)
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["bitsweep.status"] in ("finished", "stopped_early")
        searched = spec.search.space.get("quant.scheme")
        schemes = list(searched.values) if searched else [spec.run.quant.scheme]
        scenario = spec.search.space.get("scenario")
        schemes += [v["set"]["quant.scheme"] for v in (scenario.values if scenario else [])
                    if "quant.scheme" in v["set"]]  # fmt: skip
        assert child.data.params["quant.scheme"] in schemes
        history = client.get_metric_history(child.info.run_id, "val/loss")
        assert [m.step for m in history][:2] == [4, 8]
    assert {"sweep.yaml", "search_space.json", "trials.parquet", "best_trial.json"} <= _artifacts(
        mlflow_server, parent.info.run_id
    )
    if len(spec.search.objective_list) > 1:
        assert {"pareto/front.parquet", "pareto/front.png"} <= _artifacts(
            mlflow_server, parent.info.run_id, "pareto"
        )
        assert outcome.pareto is not None and len(outcome.pareto) >= 1
    if spec.run.quant.scheme in ("ternary", "hadamard"):
        packed = _artifacts(mlflow_server, children[0].info.run_id, "model/packed")
        assert {"model/packed/manifest.json", "model/packed/model.safetensors"} <= packed


def test_grid_ablation_matrix_shape(mlflow_server: str, ray_session: Any, tmp_path: Path) -> None:
    overrides = [*VISION_TINY, "train.steps=4", "train.eval_every=4",
                 "search.space.train.seed.values=[0, 1]", f"tracking.uri={mlflow_server}",
                 "tracking.experiment=grid", f"storage.path={tmp_path}"]  # fmt: skip
    spec = load_sweep("br-ablation", overrides)
    run_sweep(spec, stream=None)
    parent, children = _sweep_runs(mlflow_server, "grid", "br-ablation")
    assert len(children) == 10  # 5 scenarios x 2 seeds
    client = _client(mlflow_server)
    per_trial = pd.read_parquet(client.download_artifacts(
        parent.info.run_id, "ablation/br_scenarios.parquet", str(tmp_path)))  # fmt: skip
    assert len(per_trial) == 10 and per_trial["trial_id"].is_unique
    cells = pd.read_parquet(client.download_artifacts(
        parent.info.run_id, "ablation/br_scenarios_cells.parquet", str(tmp_path)))  # fmt: skip
    assert sorted(cells["scenario"]) == sorted(
        ["W-only", "W+A stable", "W+A moving target", "A-only", "no BR"]
    )
    assert (cells["count"] == 2).all() and cells["std"].notna().all()
    scenarios = {c.data.params["scenario"]: c.data.params for c in children}
    assert scenarios["A-only"]["loss.lambda_br"] == "0.0"
    assert scenarios["A-only"]["loss.lambda_br_act"] == "1.0"


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_interrupted_sweep_resumes_each_trial_once(mlflow_server: str, tmp_path: Path) -> None:
    args = ["run", "demo", *LM_TINY, "train.steps=40", "train.eval_every=20",
            "search.num_samples=3", "search.scheduler.type=none",
            "resources.max_concurrent_trials=1",
            f"tracking.uri={mlflow_server}", "tracking.experiment=resume",
            f"storage.path={tmp_path / 'results'}"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # interrupt once a trial has finished
            runs = _client(mlflow_server).search_runs(
                [_client(mlflow_server).get_experiment_by_name("resume").experiment_id],
                "tags.`bitsweep.status` = 'finished'",
            ) if _client(mlflow_server).get_experiment_by_name("resume") else []  # fmt: skip
            if runs or proc.poll() is not None:
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, output
    assert "bitsweep resume demo" in output
    _, before = _sweep_runs(mlflow_server, "resume", "demo")
    assert 1 <= len([c for c in before if c.data.tags["bitsweep.status"] == "finished"]) < 3
    done = _cli("resume", "demo", "--storage", str(tmp_path / "results"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    parent, children = _sweep_runs(mlflow_server, "resume", "demo")
    assert len(children) == 3
    assert sorted(c.data.tags["bitsweep.trial_id"] for c in children) == sorted(
        {c.data.tags["bitsweep.trial_id"] for c in children}
    )
    assert all(c.data.tags["bitsweep.status"] == "finished" for c in children)
    for child in children:
        steps = [
            m.step for m in _client(mlflow_server).get_metric_history(child.info.run_id, "val/loss")
        ]
        assert steps == [20, 40], steps  # no step logged twice
    assert parent.info.status == "FINISHED"
    assert json.loads(parent.data.tags["bitsweep.objectives"]) == [["val/bpb", "min"]]


def test_unreachable_tracking_server_fails_before_training(tmp_path: Path) -> None:
    result = _cli("run", "demo", "tracking.uri=http://127.0.0.1:9", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "http://127.0.0.1:9" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "bitsweep_results").exists()
