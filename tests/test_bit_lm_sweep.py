"""End-to-end: `bitsweep run bit-lm` and its ablation on a real local Ray and `mlflow server`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from orchestrator.runner import run_sweep
from orchestrator.spec import load_sweep

pytestmark = pytest.mark.slow

BIT_TINY = ["model.d_model=16", "model.n_heads=2", "model.n_layers=2", "model.seq_len=36",
            "train.batch_size=4", "train.steps=4", "train.eval_every=2", "data.eval_batches=1",
            "telemetry.gen_bytes=2", "telemetry.gen_samples=1", "telemetry.retries=0"]  # fmt: skip


def _children(uri: str, experiment: str, sweep: str) -> tuple[Any, list[Any]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`bitsweep.sweep` = '{sweep}'")
    parents = [r for r in runs if r.data.tags.get("bitsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("bitsweep.role") == "trial"]
    assert len(parents) == 1
    return parents[0], children


def test_bit_lm_preset_logs_act_metrics(
    mlflow_server: str, ray_session: Any, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    where = [f"tracking.uri={mlflow_server}", "tracking.experiment=bit-lm",
             f"storage.path={tmp_path}"]  # fmt: skip
    # every trial an ACT trial (the scenario axis would pick reversible / plain blocks too)
    tiny = [*BIT_TINY, "search.num_samples=2", "search.space.scenario=null"]
    spec = load_sweep("bit-lm", [*tiny, *where])
    outcome = run_sweep(spec, stream=None)
    assert outcome.failed == 0 and len(outcome.trials) == 2
    _, children = _children(mlflow_server, "bit-lm", "bit-lm")
    assert len(children) == 2
    client = MlflowClient(tracking_uri=mlflow_server)
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["model.arch"] == "bit_lm"
        metrics = child.data.metrics
        assert 1.0 <= metrics["act/mean_layers"] <= 2.0
        assert 1.0 <= metrics["val/act_mean_layers"] <= 2.0
        assert metrics["loss/ponder"] > 1.0
        assert 0.0 <= metrics["val/parity_error"] <= 1.0
        assert 0.0 < metrics["val/bpb"] < 12.0
        history = client.get_metric_history(child.info.run_id, "act/mean_layers")
        assert [m.step for m in history] == [2, 4]
        for name in ("telemetry/K", "telemetry/C", "telemetry/S"):  # seed 004's telemetry
            assert 0.0 <= metrics[name] <= 1.0
        assert metrics["telemetry/refused"] >= 0.0
        assert "samples.txt" in {a.path for a in client.list_artifacts(child.info.run_id)}


def test_bit_lm_ablation_matrix_causal_by_reversible(
    mlflow_server: str, ray_session: Any, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    where = [f"tracking.uri={mlflow_server}", "tracking.experiment=bit-lm-ablation",
             f"storage.path={tmp_path}"]  # fmt: skip
    spec = load_sweep("bit-lm-ablation", [*BIT_TINY, *where])
    outcome = run_sweep(spec, stream=None)
    assert outcome.failed == 0 and len(outcome.trials) == 4
    parent, children = _children(mlflow_server, "bit-lm-ablation", "bit-lm-ablation")
    assert len(children) == 4
    client = MlflowClient(tracking_uri=mlflow_server)
    name = "ablation/causal_by_reversible_cells.parquet"
    cells = pd.read_parquet(client.download_artifacts(parent.info.run_id, name, str(tmp_path)))
    assert len(cells) == 4 and cells["mean"].notna().all()
    client = MlflowClient(tracking_uri=mlflow_server)
    # the denoiser's sampler: parity fixes and its sample text (params are JSON-encoded)
    denoisers = [c for c in children if c.data.params["model.causal"] == "false"]
    assert len(denoisers) == 2
    for child in denoisers:
        assert child.data.metrics["diffusion/parity_fixes"] >= 0.0
        assert 0.0 <= child.data.metrics["telemetry/C"] <= 1.0
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "diffusion_samples.txt" in artifacts
