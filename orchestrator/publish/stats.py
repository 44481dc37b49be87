"""Cells, comparisons and tables for RESULTS.md: means over training seeds, stated plainly."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class Cell:
    """The values of one cell (one per training seed): mean, sample std and count."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        """How many values."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Their mean (NaN for none)."""
        return sum(self.values) / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        """Their sample standard deviation (NaN below two values)."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    def text(self, digits: int = 4) -> str:
        """``mean ± std (n=k)``; ``-`` without values."""
        if not self.n:
            return "-"
        spread = f" ± {self.std:.{digits}f}" if self.n > 1 else ""
        return f"{self.mean:.{digits}f}{spread} (n={self.n})"


def cells(table: pd.DataFrame, keys: Sequence[str], value: str) -> dict[tuple, Cell]:
    """``value`` of the finished trials grouped by ``keys`` (every other varying key must be a
    training seed); a NaN value is left out."""
    out: dict[tuple, list[float]] = {}
    for _, row in table.iterrows():
        key = tuple(_plain(row[k]) for k in keys)
        v = row.get(value, math.nan)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out.setdefault(key, []).append(float(v))
        else:
            out.setdefault(key, [])
    return {k: Cell(tuple(v)) for k, v in out.items()}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def verdict(a: Cell, b: Cell, mode: str) -> str:
    """Whether ``a`` is better than ``b`` beyond noise: the difference against twice its
    standard error (from the two cells' spreads over seeds)."""
    if not a.n or not b.n:
        return "not measured"
    diff = (a.mean - b.mean) * (1.0 if mode == "max" else -1.0)
    if a.n < 2 or b.n < 2:
        return ("better" if diff > 0 else "worse") + " (one seed: no error bar)"
    se = math.sqrt(a.std**2 / a.n + b.std**2 / b.n)
    if abs(diff) <= 2 * se:
        return f"within noise (difference {abs(diff):.4f}, 2 s.e. {2 * se:.4f})"
    return f"{'better' if diff > 0 else 'worse'} (difference {abs(diff):.4f} > 2 s.e. {2 * se:.4f})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A GitHub markdown table; the first column left-aligned, the others right."""
    align = ["---", *["---:"] * (len(header) - 1)]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines
