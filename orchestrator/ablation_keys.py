"""Which keys an ablation matrix cell averages over: training seeds only.

A sweep's other searched keys either stay separate cells (discrete: ``grid`` / ``choice``, the
``scenario`` axis, small ``int`` ranges) and name their value in the row label
(``BitLinear · rmsnorm_post_attn=True``, :func:`orchestrator.analysis.row_label`), or, when
sampled from a continuous range (``uniform`` / ``loguniform``) so that no two trials share a
value, are averaged over and named as marginalized. :func:`cell_keys` derives this from the
sweep's search space and the trial table; :func:`orchestrator.analysis.ablation_table` takes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .analysis import TableLike, as_frame, group_key, require_column

SEED_KEY = "train.seed"
# Discrete distributions: each value is a cell of its own. Continuous ones are sampled (no value
# repeats), so a cell per value would hold one trial: they are averaged over and named instead.
DISCRETE_DISTS = frozenset({"grid", "choice"})
CONTINUOUS_DISTS = frozenset({"uniform", "loguniform"})
FEW_LEVELS = 4  # an int range or an undeclared key with at most this many values splits cells


def is_seed_key(key: str) -> bool:
    """Whether ``key`` is a training seed (``train.seed``, or any key whose last part is
    ``seed``): the repeats a matrix cell averages over."""
    return key == SEED_KEY or key.rsplit(".", 1)[-1] == "seed"


@dataclass(frozen=True)
class CellKeys:
    """What one ablation cell holds, besides its rows (and cols) value.

    ``split``: discrete searched keys that stay separate cells (the row label names their value);
    ``seeds``: the training-seed keys a cell averages over; ``marginalized``: sampled continuous
    keys (or keys the caller asked to average) a cell also averages over, named as such.
    ``known`` is False when the search space was not available: then every other key is averaged
    over unnamed, as :func:`orchestrator.analysis.ablation_table` does without keys.
    """

    split: tuple[str, ...] = ()
    seeds: tuple[str, ...] = ()
    marginalized: tuple[str, ...] = ()
    known: bool = True

    def describe(self) -> str:
        """One line for a report or a heatmap title: what each cell averages over."""
        if not self.known:
            return "mean ± std over every other key (n per cell; the search space is unknown)"
        over = ", ".join(self.seeds) if self.seeds else "repeats of the same keys"
        parts = [f"mean ± std over {over} (n per cell)"]
        if self.split:
            parts.append(f"rows split by {', '.join(self.split)}")
        if self.marginalized:
            parts.append(f"marginalized over sampled {', '.join(self.marginalized)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (kept in an ablation table's ``attrs``, so in its parquet file)."""
        return {"split": list(self.split), "seeds": list(self.seeds),
                "marginalized": list(self.marginalized), "known": self.known}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellKeys:
        """The inverse of :meth:`to_dict`."""
        return cls(
            split=tuple(data.get("split") or ()),
            seeds=tuple(data.get("seeds") or ()),
            marginalized=tuple(data.get("marginalized") or ()),
            known=bool(data.get("known", True)),
        )


def _varies_within(data: pd.DataFrame, by: Sequence[str], key: str) -> bool:
    """Whether ``key`` takes more than one value inside some group of ``by``."""
    values = data[key].map(group_key)
    if not by:
        return values.nunique(dropna=False) > 1
    groups = pd.DataFrame({b: data[b].map(group_key) for b in by})
    groups["_key"] = values
    return bool((groups.groupby(list(by), dropna=False)["_key"].nunique(dropna=False) > 1).any())


def _is_discrete(key: str, dist: Mapping[str, Any], values: pd.Series) -> bool:
    kind = dist.get("dist")
    if key == "scenario" or kind in DISCRETE_DISTS:
        return True
    if kind in CONTINUOUS_DISTS:
        return False
    if kind == "int" and dist.get("low") is not None and dist.get("high") is not None:
        return int(dist["high"]) - int(dist["low"]) + 1 <= FEW_LEVELS
    # per_layer, or a key the space does not describe: few values in the table make cells
    return values.map(group_key).nunique(dropna=False) <= FEW_LEVELS


def cell_keys(
    space: Mapping[str, Any] | None,
    table: TableLike,
    rows: str,
    cols: str | None,
    *,
    marginalize: Sequence[str] = (),
) -> CellKeys:
    """Which searched keys split an ablation's cells, which it averages over, from the sweep's
    search space (``search.space``: key -> ``{dist: ...}``; the whole ``search`` block works too).

    Only keys that vary inside a rows x cols cell of ``table`` count (a key a scenario sets, or
    one with a single value, changes nothing). Seed keys are averaged over; ``grid`` / ``choice``
    keys, ``scenario``, small ``int`` ranges and undeclared keys with few values split cells;
    ``uniform`` / ``loguniform`` (and larger ``int``) keys are marginalized, as are the keys in
    ``marginalize``. ``space=None``: :class:`CellKeys` with ``known=False``.
    """
    if space is None:
        return CellKeys(known=False)
    if isinstance(space.get("space"), Mapping):
        space = space["space"]
    df = as_frame(table)
    fixed = [rows] if cols is None else [rows, cols]
    for key in fixed:
        require_column(df, key, "ablation key")
    candidates = [str(k) for k in space if k not in fixed and k in df.columns]
    unknown = [k for k in marginalize if k not in candidates and k not in fixed]
    if unknown:
        raise ValueError(f"cannot marginalize {unknown}: not searched keys of the table")
    seeds = [k for k in candidates if is_seed_key(k) and k not in marginalize]
    split = []
    for key in candidates:
        if key in seeds or key in marginalize:
            continue
        dist = space[key] if isinstance(space[key], Mapping) else {}
        if _is_discrete(key, dist, df[key]) and _varies_within(df, fixed, key):
            split.append(key)
    by = [*fixed, *split]
    rest = [k for k in candidates if k not in split and _varies_within(df, by, k)]
    return CellKeys(
        split=tuple(split),
        seeds=tuple(k for k in rest if k in seeds),
        marginalized=tuple(k for k in rest if k not in seeds),
    )


def stored_cell_keys(long: pd.DataFrame) -> tuple[str, str | None, CellKeys] | None:
    """(rows, cols, keys) an :func:`orchestrator.analysis.ablation_table` recorded in its
    ``attrs`` (which its parquet file keeps); None for a table without them (an older file)."""
    meta = long.attrs.get("ablation")
    if not isinstance(meta, Mapping) or not meta.get("rows"):
        return None
    return str(meta["rows"]), meta.get("cols"), CellKeys.from_dict(meta)
