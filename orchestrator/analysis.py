"""Pure functions over a sweep's trial table: Pareto fronts and ablation matrices.

An ablation cell averages over training seeds only: :func:`orchestrator.ablation_keys.cell_keys`
says which keys are seeds, which discrete keys stay separate cells and which sampled keys are
marginalized (from the sweep's search space); :func:`ablation_table` takes that answer as an
explicit argument, so it stays a function of its inputs.

A trial table has one row per trial: ``trial_id``, ``status``, the dotted params
(``quant.weight_bits``) and the final value of each reported metric (``val/acc``). Either a pandas
DataFrame or a pyarrow Table is accepted; results are pandas DataFrames.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    from .ablation_keys import CellKeys

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


def require_column(df: pd.DataFrame, column: str, role: str) -> None:
    """Raise ValueError naming ``column`` (and the closest column) when ``df`` lacks it."""
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
        require_column(df, name, "objective")


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


def group_key(value: Any) -> Hashable:
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


# ---- ablation matrices --------------------------------------------------------------------------

STATS = ("mean", "std", "count")
LABEL_JOIN = " · "  # between a row's value and each split key's ``name=value``


def ablation_table(
    table: TableLike, rows: str, cols: str | None, value: str, *, keys: CellKeys | None = None
) -> pd.DataFrame:
    """One row per cell: the keys (``rows``, ``cols``, then ``keys.split``), then ``mean``,
    ``std`` (ddof=1) and ``count`` of value.

    A cell is a (rows, cols, split keys) combination; every other key is aggregated over. Without
    ``keys`` that is every other column (``known=False``); with the
    :func:`~orchestrator.ablation_keys.cell_keys` of a sweep it is the seeds and the marginalized
    keys. ``attrs["ablation"]`` reports back rows, cols, value and the ``CellKeys`` fields (the
    table's parquet file keeps them).
    Missing values (a failed trial) are not counted, but their keys still make a cell (mean NaN,
    count 0), so a grid keeps its shape; a cell with one value has ``std`` NaN. ``cols=None``
    aggregates by ``rows`` (and the split keys) alone.
    """
    df = as_frame(table)
    split = list(keys.split) if keys is not None else []
    if rows == cols:
        raise ValueError(f"ablation rows and cols must differ, both are {rows!r}")
    group = [rows] if cols is None else [rows, cols]
    clash = [k for k in split if k in group or k in STATS]
    if clash:
        raise ValueError(f"ablation split keys {clash} are also its rows/cols or a statistic")
    group += split
    for key in group:
        require_column(df, key, "ablation key")
    require_column(df, value, "ablation value")
    if value in group:
        raise ValueError(f"ablation value {value!r} is also one of its keys")
    data = pd.DataFrame({key: df[key].map(group_key) for key in group})
    data["value"] = pd.to_numeric(df[value], errors="coerce")
    grouped = data.groupby(group, dropna=False, sort=True)["value"]
    out = grouped.agg(mean="mean", std=lambda s: s.std(ddof=1), count="count").reset_index()
    out["count"] = out["count"].astype(int)
    described = keys.to_dict() if keys is not None else {"known": False}
    out.attrs["ablation"] = {"rows": rows, "cols": cols, "value": value, **described}
    return out


def ablation_matrix(
    table: TableLike, rows: str, cols: str | None, value: str, *, keys: CellKeys | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ablation as two rows x cols matrices: mean and sample std of ``value``.

    The index is named ``rows`` and holds its distinct values (with split keys it is named
    ``"<rows> · <name> ..."`` and holds the :func:`row_label` of each combination), the columns
    are named ``cols`` (``cols=None``: one column, named ``value``); a combination with no value
    is NaN. Counts per cell: :func:`ablation_counts`.
    """
    long = ablation_table(table, rows, cols, value, keys=keys)
    return matrices_from_table(long, rows, cols, value)[:2]


def ablation_counts(
    table: TableLike, rows: str, cols: str | None, value: str, *, keys: CellKeys | None = None
) -> pd.DataFrame:
    """How many values each cell of the ablation aggregates (0 where none)."""
    long = ablation_table(table, rows, cols, value, keys=keys)
    return matrices_from_table(long, rows, cols, value)[2]


def split_names(split: Sequence[str]) -> list[str]:
    """The split keys as a row label names them: the last dotted part, or the whole key where
    two keys share it."""
    short = [k.rsplit(".", 1)[-1] for k in split]
    return [s if short.count(s) == 1 else k for k, s in zip(split, short, strict=True)]


def row_label(row: Any, split: Sequence[str], values: Sequence[Any]) -> Any:
    """A matrix row's label: the rows value alone without split keys, else
    ``"<row> · <name>=<value> · ..."`` (``BitLinear · rmsnorm_post_attn=True``), names as
    :func:`split_names`."""
    if not split:
        return row
    named = [f"{n}={v}" for n, v in zip(split_names(split), values, strict=True)]
    return LABEL_JOIN.join([str(row), *named])


def matrices_from_table(
    long: pd.DataFrame, rows: str, cols: str | None, value: str = "value"
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Pivot an :func:`ablation_table` (``ablation/<name>_cells.parquet``) to mean, std and count.

    Columns other than ``rows``, ``cols`` and the statistics are split keys: each combination is
    a row of its own, labelled by :func:`row_label` and ordered by rows value, then split values.
    """
    split = [c for c in long.columns if c not in (rows, cols, *STATS)]
    row_tuples = list(zip(long[rows], *(long[k] for k in split), strict=True))
    ordered = sorted(dict.fromkeys(row_tuples), key=lambda t: tuple(_sort_key(v) for v in t))
    row_keys = [row_label(t[0], split, t[1:]) for t in ordered]
    col_list = [value] * len(long) if cols is None else list(long[cols])
    col_keys = sorted(dict.fromkeys(col_list), key=_sort_key)
    row_pos = {key: i for i, key in enumerate(ordered)}
    col_pos = {key: j for j, key in enumerate(col_keys)}
    cells = [(row_pos[r], col_pos[c]) for r, c in zip(row_tuples, col_list, strict=True)]
    index_name = LABEL_JOIN.join([rows, *split_names(split)])

    def pivot(column: str, fill: float) -> pd.DataFrame:
        values = np.full((len(row_keys), len(col_keys)), fill, dtype=float)
        for (i, j), v in zip(cells, long[column], strict=True):
            values[i, j] = v
        return pd.DataFrame(
            values,
            index=pd.Index(row_keys, name=index_name, tupleize_cols=False),
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
