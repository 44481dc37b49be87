"""Pure functions over a sweep's trial table: Pareto fronts and ablation matrices.

A trial table has one row per trial: ``trial_id``, ``status``, the dotted params
(``quant.weight_bits``) and the final value of each reported metric (``val/acc``). Either a pandas
DataFrame or a pyarrow Table is accepted; results are pandas DataFrames.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

Mode = Literal["min", "max"]
Objective = tuple[str, Mode]
TableLike = pd.DataFrame | pa.Table


def as_frame(table: TableLike) -> pd.DataFrame:
    """The table as a pandas DataFrame (a pyarrow Table is converted, a DataFrame kept)."""
    if isinstance(table, pa.Table):
        return table.to_pandas()
    if isinstance(table, pd.DataFrame):
        return table
    raise TypeError(f"expected a pandas DataFrame or a pyarrow Table, got {type(table).__name__}")


def _require_column(df: pd.DataFrame, column: str, role: str) -> None:
    if column in df.columns:
        return
    close = difflib.get_close_matches(column, [str(c) for c in df.columns], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{role} {column!r} is not a column of the trial table{hint}")


def _check_objectives(df: pd.DataFrame, objectives: Sequence[Objective]) -> None:
    if not objectives:
        raise ValueError("pareto_front needs at least one objective (metric, 'min'|'max')")
    names = [name for name, _ in objectives]
    if len(set(names)) != len(names):
        raise ValueError(f"objectives name a metric twice: {names}")
    for name, mode in objectives:
        if mode not in ("min", "max"):
            raise ValueError(f"objective {name!r}: mode must be 'min' or 'max', got {mode!r}")
        _require_column(df, name, "objective")


def objective_matrix(df: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    """The objective columns as a float array, negated where the mode is ``max`` (all minimized)."""
    columns = []
    for name, mode in objectives:
        values = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)
        columns.append(-values if mode == "max" else values)
    return np.column_stack(columns) if columns else np.empty((len(df), 0))


def non_dominated_mask(points: np.ndarray) -> np.ndarray:
    """Which rows of ``points`` (n x k, minimized) no other row dominates.

    Row a dominates row b when a <= b in every objective and a < b in at least one, so identical
    rows do not dominate each other: ties on the front are all kept.
    """
    n = points.shape[0]
    keep = np.ones(n, dtype=bool)
    # One vectorized comparison per row keeps memory at O(n k) for sweeps of thousands of trials.
    for i in range(n):
        no_worse = np.all(points <= points[i], axis=1)
        better = np.any(points < points[i], axis=1)
        if np.any(no_worse & better):
            keep[i] = False
    return keep


def pareto_front(table: TableLike, objectives: Sequence[Objective]) -> pd.DataFrame:
    """The non-dominated rows of ``table`` for ``objectives`` [(metric, "min"|"max"), ...].

    Rows with a missing (NaN) objective value take no part. The result keeps the table's columns
    and index and is sorted by the first objective (best first), then the others.
    """
    df = as_frame(table)
    _check_objectives(df, objectives)
    points = objective_matrix(df, objectives)
    valid = ~np.isnan(points).any(axis=1)
    mask = np.zeros(len(df), dtype=bool)
    mask[np.flatnonzero(valid)] = non_dominated_mask(points[valid])
    front = df[mask]
    order = np.lexsort(points[mask].T[::-1]) if mask.any() else np.array([], dtype=int)
    return front.iloc[order]


def _hashable(value: Any) -> Hashable:
    """Group keys must be hashable: lists (``growth.strategy``) and dicts become their JSON text,
    the same text MLflow shows as the param's value."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    # NaN != NaN would split one missing key into several groups; None is one key.
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def ablation_table(table: TableLike, rows: str, cols: str | None, value: str) -> pd.DataFrame:
    """One row per (rows, cols) cell: the keys, then ``mean``, ``std`` (ddof=1), ``count`` of value.

    Every other key (seeds, for example) is aggregated over. Missing values (a failed trial) are
    not counted, but their keys still make a cell (mean NaN, count 0), so a grid keeps its shape;
    a cell with one value has ``std`` NaN. ``cols=None`` aggregates by ``rows`` alone.
    """
    df = as_frame(table)
    if rows == cols:
        raise ValueError(f"ablation rows and cols must differ, both are {rows!r}")
    keys = [rows] if cols is None else [rows, cols]
    for key in keys:
        _require_column(df, key, "ablation key")
    _require_column(df, value, "ablation value")
    if value in keys:
        raise ValueError(f"ablation value {value!r} is also one of its keys")
    data = pd.DataFrame({key: df[key].map(_hashable) for key in keys})
    data["value"] = pd.to_numeric(df[value], errors="coerce")
    grouped = data.groupby(keys, dropna=False, sort=True)["value"]
    out = grouped.agg(mean="mean", std=lambda s: s.std(ddof=1), count="count").reset_index()
    out["count"] = out["count"].astype(int)
    return out


def ablation_matrix(
    table: TableLike, rows: str, cols: str | None, value: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ablation as two rows x cols matrices: mean and sample std of ``value``.

    The index is named ``rows`` and holds its distinct values, the columns are named ``cols``
    (``cols=None``: one column, named ``value``); a combination with no value is NaN. Counts per
    cell: :func:`ablation_counts`.
    """
    long = ablation_table(table, rows, cols, value)
    return matrices_from_table(long, rows, cols, value)[:2]


def ablation_counts(table: TableLike, rows: str, cols: str | None, value: str) -> pd.DataFrame:
    """How many values each cell of the ablation aggregates (0 where none)."""
    long = ablation_table(table, rows, cols, value)
    return matrices_from_table(long, rows, cols, value)[2]


def matrices_from_table(
    long: pd.DataFrame, rows: str, cols: str | None, value: str = "value"
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Pivot an :func:`ablation_table` (``ablation/<name>.parquet``) to mean, std and count."""
    row_keys = sorted(dict.fromkeys(long[rows]), key=_sort_key)
    col_list = [value] * len(long) if cols is None else list(long[cols])
    col_keys = sorted(dict.fromkeys(col_list), key=_sort_key)
    row_pos = {key: i for i, key in enumerate(row_keys)}
    col_pos = {key: j for j, key in enumerate(col_keys)}
    cells = [(row_pos[r], col_pos[c]) for r, c in zip(long[rows], col_list, strict=True)]

    def pivot(column: str, fill: float) -> pd.DataFrame:
        values = np.full((len(row_keys), len(col_keys)), fill, dtype=float)
        for (i, j), v in zip(cells, long[column], strict=True):
            values[i, j] = v
        return pd.DataFrame(
            values,
            index=pd.Index(row_keys, name=rows, tupleize_cols=False),
            columns=pd.Index(col_keys, name=cols, tupleize_cols=False),
        )

    return pivot("mean", np.nan), pivot("std", np.nan), pivot("count", 0.0).astype(int)


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers in numeric order, then everything else by its text (keys may mix types)."""
    if isinstance(value, (bool, np.bool_)):
        return (1, str(value))
    if isinstance(value, (int, float, np.integer, np.floating)) and not pd.isna(value):
        return (0, float(value))
    return (1, str(value))
