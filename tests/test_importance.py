"""fANOVA parameter importance and the parallel-coordinates plot of a sweep's trial table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchestrator.importance import parallel_coordinates, parameter_importance


def _table(n: int = 24) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    lr = 10 ** rng.uniform(-3, -2, n)
    noise = rng.uniform(0, 1, n)
    scheme = rng.choice(["ternary", "hadamard"], n)
    bpb = 3.0 + 40 * (lr - 0.004) ** 2 * 1e3 + 0.001 * noise  # lr alone decides
    return pd.DataFrame({"trial_id": [f"t{i}" for i in range(n)], "status": "finished",
                         "train.lr": lr, "noise.key": noise, "quant.scheme": scheme,
                         "val/bpb": bpb})  # fmt: skip


def test_the_key_that_decides_the_metric_is_the_most_important() -> None:
    space = {"train.lr": {"dist": "loguniform", "low": 1e-3, "high": 1e-2}}
    scores = parameter_importance(
        _table(), ["train.lr", "noise.key", "quant.scheme"], "val/bpb", "min", space
    )
    assert scores.index[0] == "train.lr" and scores["train.lr"] > 0.8
    assert abs(scores.sum() - 1.0) < 1e-6


def test_stopped_trials_are_left_out_and_too_few_is_an_error() -> None:
    table = _table(4)
    table.loc[1:, "status"] = "stopped_early"
    with pytest.raises(ValueError, match="needs 3 finished trials with val/bpb, got 1"):
        parameter_importance(table, ["train.lr"], "val/bpb", "min")


def test_parallel_coordinates_draws_one_line_per_trial(tmp_path) -> None:
    table = _table(6)
    fig = parallel_coordinates(table, ["train.lr", "quant.scheme"], "val/bpb", tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
    assert len(fig.axes[0].lines) == 6 + 3  # the trials, then one vertical rule per axis
