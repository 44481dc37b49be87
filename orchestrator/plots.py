"""PNG plots of a sweep's results: ablation heatmaps and Pareto fronts (matplotlib, Agg backend)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

# Headless: the plots are written by the Tune driver, a CI job or a cluster node with no display.
matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .analysis import Objective, TableLike, as_frame, objective_matrix, pareto_front


def _fmt(value: float) -> str:
    """Short numbers for cell labels: 4 significant digits."""
    return f"{value:.4g}"


def _label(key: object) -> str:
    if isinstance(key, tuple):
        return ",".join(str(k) for k in key)
    return str(key)


def ablation_heatmap(
    mean: pd.DataFrame,
    std: pd.DataFrame,
    path: str | Path,
    *,
    title: str | None = None,
    value: str | None = None,
    count: pd.DataFrame | None = None,
) -> Path:
    """Draw the ablation matrix as a heatmap with each cell annotated ``mean ± std``; save as PNG.

    ``mean`` and ``std`` come from :func:`orchestrator.analysis.ablation_matrix`; empty cells
    (NaN mean) are left blank; with ``count``, each cell also shows ``n=``. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = mean.to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * n_cols + 2.0), max(3.0, 0.8 * n_rows + 1.8)))
    try:
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, label=value or "")
        finite = values[np.isfinite(values)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for i, j in itertools.product(range(n_rows), range(n_cols)):
            m = values[i, j]
            if not np.isfinite(m):
                continue
            s = float(std.iat[i, j])
            text = _fmt(m) if math.isnan(s) else f"{_fmt(m)}\n± {_fmt(s)}"
            if count is not None:
                text += f"\nn={int(count.iat[i, j])}"
            # Dark cells get white text so the labels stay readable on the whole colormap.
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8,
                color="white" if m < middle else "black",
            )
        ax.set_xticks(range(n_cols), [_label(c) for c in mean.columns])
        ax.set_yticks(range(n_rows), [_label(r) for r in mean.index])
        ax.set_xlabel(str(mean.columns.name or ""))
        ax.set_ylabel(str(mean.index.name or ""))
        ax.set_title(title or (f"{value}: mean ± std" if value else "mean ± std"))
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def _axis_label(objective: Objective) -> str:
    name, mode = objective
    return f"{name} ({'lower' if mode == 'min' else 'higher'} is better)"


def pareto_plot(
    table: TableLike,
    objectives: Sequence[Objective],
    path: str | Path,
    *,
    front: pd.DataFrame | None = None,
    title: str | None = None,
) -> Path:
    """Plot every trial and the Pareto front for 2 objectives (one panel) or 3 (pairwise panels).

    With two objectives the front is drawn as a line through its points; with three, each
    panel projects all trials and highlights the front's points. Returns the saved PNG's path.
    """
    if len(objectives) not in (2, 3):
        raise ValueError(f"pareto_plot draws 2 or 3 objectives, got {len(objectives)}")
    df = as_frame(table)
    if front is None:
        front = pareto_front(df, objectives)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = objective_matrix(df, [(name, "min") for name, _ in objectives])
    front_raw = objective_matrix(front, [(name, "min") for name, _ in objectives])
    pairs = list(itertools.combinations(range(len(objectives)), 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.0 * len(pairs), 4.2), squeeze=False)
    try:
        for ax, (a, b) in zip(axes[0], pairs, strict=True):
            ax.scatter(raw[:, a], raw[:, b], s=22, color="0.6", label="trials")
            ax.scatter(
                front_raw[:, a],
                front_raw[:, b],
                s=40,
                color="tab:red",
                zorder=3,
                label="Pareto front",
            )
            if len(objectives) == 2 and len(front_raw):
                order = np.argsort(front_raw[:, a], kind="stable")
                ax.plot(front_raw[order, a], front_raw[order, b], color="tab:red", linewidth=1.2)
            ax.set_xlabel(_axis_label(objectives[a]))
            ax.set_ylabel(_axis_label(objectives[b]))
            ax.grid(True, alpha=0.3)
        axes[0][0].legend(loc="best", fontsize=8)
        fig.suptitle(title or f"Pareto front ({len(front)} of {len(df)} trials)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
