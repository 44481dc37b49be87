"""The parent run's ablation files at a sweep's end (issue 18): a cell averages over training
seeds only, other grid keys stay cells, sampled keys are named; the search space comes from the
caller or, through a real MLflow store, from the ``search_space.json`` the tracker logged."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from handmade_sweeps import (
    LM_OBJECTIVES,
    SAMPLED_KEY,
    bitnet_lm_document,
    lm_search_block,
    lm_table,
)

from orchestrator.sweep_artifacts import (
    ParentArtifacts,
    log_sweep_artifacts,
    write_sweep_artifacts,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def lm_trial_table() -> pd.DataFrame:
    rows = [
        {"trial_id": t.trial_id, "run_id": f"r{t.trial_id}", "status": "finished", **t.params,
         "val/bpb": t.final("val/bpb")}
        for t in lm_table()
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_cells_average_seeds_and_keep_the_other_grid_keys(tmp_path: Path) -> None:
    document = bitnet_lm_document()
    out = write_sweep_artifacts(tmp_path, lm_trial_table(), document["ablation"], LM_OBJECTIVES,
                                search_space=lm_search_block(document))  # fmt: skip
    mean, std = out["ablations"]["layer_by_warmup"]
    assert mean.shape == (6, 2) and mean.index.name == "scenario · rmsnorm_post_attn"
    assert std.to_numpy() == pytest.approx(0.01 / 2**0.5)  # two seeds 0.01 apart, nothing else
    cells = pd.read_parquet(tmp_path / "ablation" / "layer_by_warmup_cells.parquet")
    assert list(cells.columns) == ["scenario", "schedule.lambda_warmup_frac",
                                   "model.rmsnorm_post_attn", "mean", "std", "count"]  # fmt: skip
    assert len(cells) == 12 and (cells["count"] == 2).all()
    meta = cells.attrs["ablation"]
    assert meta["seeds"] == ["train.seed"] and meta["marginalized"] == [SAMPLED_KEY]
    per_trial = pd.read_parquet(tmp_path / "ablation" / "layer_by_warmup.parquet")
    assert len(per_trial) == 24
    assert {"model.rmsnorm_post_attn", "train.seed", SAMPLED_KEY} <= set(per_trial.columns)
    other = pd.read_parquet(tmp_path / "ablation" / "layer_by_post_attn_norm_cells.parquet")
    assert "schedule.lambda_warmup_frac" in other and len(other) == 12
    assert (tmp_path / "ablation" / "layer_by_warmup.png").read_bytes()[:8] == PNG_MAGIC


def test_without_a_search_space_cells_average_every_other_key(tmp_path: Path) -> None:
    document = bitnet_lm_document()
    out = write_sweep_artifacts(tmp_path, lm_trial_table(), document["ablation"], LM_OBJECTIVES)
    mean, _ = out["ablations"]["layer_by_warmup"]
    assert mean.shape == (3, 2)
    cells = pd.read_parquet(tmp_path / "ablation" / "layer_by_warmup_cells.parquet")
    assert (cells["count"] == 4).all() and cells.attrs["ablation"]["known"] is False


def test_logging_reads_the_space_the_tracker_logged(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from orchestrator.tracking import SweepTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    document = bitnet_lm_document()
    block = lm_search_block(document)
    parent = SweepTracker("lm", tracking_uri=uri, objectives=LM_OBJECTIVES, search_space=block,
                          reuse=False).start()  # fmt: skip
    client = MlflowClient(uri)
    assert ParentArtifacts(client, parent).search_space() == block["space"]
    summary = log_sweep_artifacts(client, parent, lm_trial_table(), document["ablation"],
                                  LM_OBJECTIVES)  # fmt: skip
    assert summary["ablations"]["layer_by_warmup"][0].shape == (6, 2)
    cells = ParentArtifacts(client, parent).stored_ablations()["layer_by_warmup"]
    assert len(cells) == 12 and cells.attrs["ablation"]["split"] == ["model.rmsnorm_post_attn"]
