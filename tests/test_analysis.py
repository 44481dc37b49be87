"""Pareto fronts and ablation matrices on hand-made trial tables."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.ablation_keys import CellKeys
from orchestrator.analysis import (
    ablation_counts,
    ablation_matrix,
    ablation_table,
    matrices_from_table,
    pareto_front,
    row_label,
    split_names,
)


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """a dominates b (all objectives minimized)."""
    return bool(np.all(a <= b) and np.any(a < b))


def test_pareto_front_two_objectives_by_hand() -> None:
    df = pd.DataFrame(
        {
            "trial_id": list("abcdef"),
            "val/acc": [0.90, 0.80, 0.95, 0.85, 0.90, 0.70],
            "model/bits_total": [200, 100, 400, 150, 250, 100],
        }
    )
    front = pareto_front(df, [("val/acc", "max"), ("model/bits_total", "min")])
    # e (0.90 at 250 bits) is dominated by a; f (0.70 at 100) by b.
    assert list(front["trial_id"]) == ["c", "a", "d", "b"]  # best accuracy first
    assert list(front.index) == [2, 0, 3, 1]  # the table's own index is kept


def test_pareto_front_keeps_ties_and_skips_nan() -> None:
    df = pd.DataFrame(
        {"x": [1.0, 1.0, 2.0, np.nan, 0.5], "y": [1.0, 1.0, 0.5, 0.0, np.nan], "id": range(5)}
    )
    front = pareto_front(df, [("x", "min"), ("y", "min")])
    assert sorted(front["id"]) == [0, 1, 2]  # identical rows do not dominate each other


def test_pareto_front_three_objectives_and_pyarrow() -> None:
    table = pa.table(
        {
            "id": [0, 1, 2, 3],
            "a": [1.0, 2.0, 3.0, 3.0],
            "b": [3.0, 2.0, 1.0, 2.0],
            "c": [1.0, 1.0, 1.0, 0.0],
        }
    )
    front = pareto_front(table, [("a", "min"), ("b", "min"), ("c", "min")])
    assert sorted(front["id"]) == [0, 1, 2, 3]  # row 3 trades b for c
    front = pareto_front(table, [("a", "min"), ("b", "min"), ("c", "max")])
    assert sorted(front["id"]) == [0, 1, 2]


def test_pareto_front_errors_name_the_objective() -> None:
    df = pd.DataFrame({"val/acc": [1.0], "val/loss": [1.0]})
    with pytest.raises(ValueError, match=r"'val/accuracy' is not a column.*did you mean 'val/acc'"):
        pareto_front(df, [("val/accuracy", "max"), ("val/loss", "min")])
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        pareto_front(df, [("val/acc", "maximize"), ("val/loss", "min")])


finite = st.floats(min_value=-5, max_value=5, allow_nan=False).map(lambda v: round(v, 1))


@given(
    points=st.lists(st.tuples(finite, finite, finite), min_size=1, max_size=25),
    k=st.sampled_from([2, 3]),
    modes=st.tuples(*[st.sampled_from(["min", "max"])] * 3),
)
def test_pareto_front_properties(points: list, k: int, modes: tuple) -> None:
    names = ["o0", "o1", "o2"][:k]
    df = pd.DataFrame({n: [p[i] for p in points] for i, n in enumerate(names)})
    objectives = list(zip(names, modes[:k], strict=True))
    front = pareto_front(df, objectives)
    signs = np.array([-1.0 if m == "max" else 1.0 for m in modes[:k]])
    all_points = df[names].to_numpy() * signs
    front_points = front[names].to_numpy() * signs
    assert len(front) >= 1
    for f in front_points:  # nothing dominates a front point
        assert not any(dominates(p, f) for p in all_points)
    for i in set(df.index) - set(front.index):  # every other row is dominated by the front
        assert any(dominates(f, all_points[i]) for f in front_points)


def seeded_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for scheme in ["ternary", "lsq", "hadamard"]:
        for bits in [2, 4]:
            for seed in range(3):
                rows.append(
                    {
                        "quant.scheme": scheme,
                        "quant.weight_bits": bits,
                        "train.seed": seed,
                        "val/acc": float(rng.uniform(0.5, 1.0)),
                    }
                )
    return pd.DataFrame(rows)


def test_ablation_mean_and_std_against_numpy() -> None:
    df = seeded_table()
    mean, std = ablation_matrix(df, "quant.scheme", "quant.weight_bits", "val/acc")
    assert mean.shape == (3, 2) and std.shape == (3, 2)
    assert list(mean.index) == ["hadamard", "lsq", "ternary"]
    assert list(mean.columns) == [2, 4]
    assert mean.index.name == "quant.scheme" and mean.columns.name == "quant.weight_bits"
    for scheme in mean.index:
        for bits in mean.columns:
            cell = df[(df["quant.scheme"] == scheme) & (df["quant.weight_bits"] == bits)]
            values = cell["val/acc"].to_numpy()
            assert mean.loc[scheme, bits] == pytest.approx(np.mean(values))
            assert std.loc[scheme, bits] == pytest.approx(np.std(values, ddof=1))
    counts = ablation_counts(df, "quant.scheme", "quant.weight_bits", "val/acc")
    assert (counts.to_numpy() == 3).all()


def test_ablation_missing_values_keep_the_grid_shape() -> None:
    df = seeded_table()
    df.loc[(df["quant.scheme"] == "lsq") & (df["quant.weight_bits"] == 4), "val/acc"] = np.nan
    df.loc[0, "val/acc"] = np.nan  # one failed seed of (ternary, 2)
    mean, std = ablation_matrix(df, "quant.scheme", "quant.weight_bits", "val/acc")
    counts = ablation_counts(df, "quant.scheme", "quant.weight_bits", "val/acc")
    assert mean.shape == (3, 2)
    assert math.isnan(mean.loc["lsq", 4]) and counts.loc["lsq", 4] == 0
    assert counts.loc["ternary", 2] == 2
    kept = df[(df["quant.scheme"] == "ternary") & (df["quant.weight_bits"] == 2)]["val/acc"]
    assert std.loc["ternary", 2] == pytest.approx(np.std(kept.dropna(), ddof=1))


def test_ablation_single_value_cell_has_nan_std_and_list_keys_work() -> None:
    df = pd.DataFrame(
        {
            "growth.strategy": [["depth", "width"], ["depth", "width"], ["width"]],
            "quant.scheme": ["a", "a", "b"],
            "val/loss": [1.0, 3.0, 5.0],
        }
    )
    long = ablation_table(df, "growth.strategy", "quant.scheme", "val/loss")
    assert list(long.columns) == ["growth.strategy", "quant.scheme", "mean", "std", "count"]
    mean, std, count = matrices_from_table(long, "growth.strategy", "quant.scheme")
    both, width = '["depth", "width"]', '["width"]'  # list keys as their JSON (MLflow's) text
    assert mean.loc[both, "a"] == 2.0
    assert math.isnan(std.loc[width, "b"]) and count.loc[width, "b"] == 1
    assert math.isnan(mean.loc[width, "a"]) and count.loc[width, "a"] == 0


def test_ablation_by_rows_only_and_errors() -> None:
    df = seeded_table()
    mean, std = ablation_matrix(df, "quant.scheme", None, "val/acc")
    assert mean.shape == (3, 1) and list(mean.columns) == ["val/acc"]
    expected = df.groupby("quant.scheme")["val/acc"].std(ddof=1)
    assert std["val/acc"].to_dict() == pytest.approx(expected.to_dict())
    with pytest.raises(ValueError, match=r"'quant.schem' is not a column.*'quant.scheme'"):
        ablation_matrix(df, "quant.schem", "train.seed", "val/acc")
    with pytest.raises(ValueError, match="must differ"):
        ablation_matrix(df, "train.seed", "train.seed", "val/acc")


def scenario_table() -> pd.DataFrame:
    """bitnet-lm's grid (scenario x warm-up x post-attention norm) times two seeds; the norm
    moves val/bpb by 0.3, a seed by 0.01."""
    rows = []
    for i, scenario in enumerate(["BitLinear", "H-BitLinear o_proj+down_proj", "H-BitLinear all"]):
        for warmup in (0.0, 0.4):
            for norm in (False, True):
                for seed in (0, 1):
                    bpb = 2.0 + 0.1 * i + 0.05 * warmup + 0.3 * norm + 0.01 * seed
                    rows.append({"scenario": scenario, "schedule.lambda_warmup_frac": warmup,
                                 "model.rmsnorm_post_attn": norm, "train.seed": seed,
                                 "val/bpb": bpb})  # fmt: skip
    return pd.DataFrame(rows)


def test_a_cell_averages_seeds_only_other_grid_keys_split_the_rows() -> None:
    df = scenario_table()
    rows, cols = "scenario", "schedule.lambda_warmup_frac"
    keys = CellKeys(split=("model.rmsnorm_post_attn",), seeds=("train.seed",))
    long = ablation_table(df, rows, cols, "val/bpb", keys=keys)
    # 3 x 2 x 2 cells of two seeds each; averaging every other key gave 3 x 2 cells of four
    assert len(long) == 12 and (long["count"] == 2).all()
    assert list(long.columns) == [rows, cols, "model.rmsnorm_post_attn", "mean", "std", "count"]
    assert long["std"].to_numpy() == pytest.approx(np.full(12, np.std([0.0, 0.01], ddof=1)))
    assert long.attrs["ablation"] == {"rows": rows, "cols": cols, "value": "val/bpb",
                                      **keys.to_dict()}  # fmt: skip
    mean, std = ablation_matrix(df, rows, cols, "val/bpb", keys=keys)
    counts = ablation_counts(df, rows, cols, "val/bpb", keys=keys)
    assert mean.shape == (6, 2) and (counts.to_numpy() == 2).all()
    assert mean.index.name == "scenario · rmsnorm_post_attn"
    assert list(mean.index[:2]) == [
        "BitLinear · rmsnorm_post_attn=False",
        "BitLinear · rmsnorm_post_attn=True",
    ]
    cell = df[(df["scenario"] == "BitLinear") & df["model.rmsnorm_post_attn"]
              & (df["schedule.lambda_warmup_frac"] == 0.4)]["val/bpb"]  # fmt: skip
    assert mean.loc["BitLinear · rmsnorm_post_attn=True", 0.4] == pytest.approx(cell.mean())
    assert std.loc["BitLinear · rmsnorm_post_attn=True", 0.4] == pytest.approx(cell.std(ddof=1))
    # without keys every other key is averaged over (and the table says the keys are unknown)
    mixed = ablation_table(df, rows, cols, "val/bpb")
    assert len(mixed) == 6 and (mixed["count"] == 4).all()
    assert mixed.attrs["ablation"]["known"] is False


def test_stored_cells_pivot_back_with_their_split_keys(tmp_path: Path) -> None:
    keys = CellKeys(split=("model.rmsnorm_post_attn",), seeds=("train.seed",))
    long = ablation_table(scenario_table(), "scenario", None, "val/bpb", keys=keys)
    long.to_parquet(tmp_path / "cells.parquet", index=False)
    stored = pd.read_parquet(tmp_path / "cells.parquet")
    assert stored.attrs["ablation"]["split"] == ["model.rmsnorm_post_attn"]
    mean, _, count = matrices_from_table(stored, "scenario", None, "val/bpb")
    assert mean.shape == (6, 1) and (count.to_numpy() == 4).all()  # warm-up is averaged here
    assert mean.index[-1] == "H-BitLinear o_proj+down_proj · rmsnorm_post_attn=True"


def test_row_labels_name_split_keys_short_unless_ambiguous() -> None:
    assert row_label("lsq", [], []) == "lsq"
    assert row_label(2, ["quant.scheme"], ["lsq"]) == "2 · scheme=lsq"
    assert split_names(["quant.bits", "model.bits", "train.lr"]) == [
        "quant.bits",
        "model.bits",
        "lr",
    ]
    with pytest.raises(ValueError, match="split keys"):
        ablation_table(scenario_table(), "scenario", None, "val/bpb",
                       keys=CellKeys(split=("scenario",)))  # fmt: skip
