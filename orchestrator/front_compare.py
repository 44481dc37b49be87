"""Several sweeps' Pareto fronts in one plot: search and gradient side by side.

Seed 000 learns bit-widths by gradient (the ``bit-budget`` preset); the ``mixed-precision``
preset searches per-layer bit-widths with Optuna on the same network. Drawing both fronts of
(accuracy, total bits) in one plot shows which reaches the better trade-off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .analysis import Objective, TableLike, as_frame, objective_matrix, pareto_front
from .plot_common import _colors, _save, _use_backend
from .plots import _axis_label


def compare_fronts(
    tables: Mapping[str, TableLike],
    objectives: Sequence[Objective],
    path: str | Path | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """Each labelled trial table's trials (faint) and Pareto front (a line), two objectives.

    ``tables``: ``{label: trial table}``, e.g. ``{"bit-budget (gradient)": ..., "mixed-precision
    (search)": ...}`` from :func:`orchestrator.results.load_sweep_results`'s ``.trials``.
    """
    if len(objectives) != 2:
        raise ValueError(f"compare_fronts draws 2 objectives, got {len(objectives)}")
    _use_backend()
    fig = Figure(figsize=(6.0, 4.4))
    ax = fig.subplots()
    raw_objectives = [(name, "min") for name, _ in objectives]
    for (label, table), color in zip(tables.items(), _colors(len(tables)), strict=True):
        df = as_frame(table)
        points = objective_matrix(df, raw_objectives)
        front = objective_matrix(pareto_front(df, objectives), raw_objectives)
        ax.scatter(points[:, 0], points[:, 1], s=14, color=color, alpha=0.3)
        order = np.argsort(front[:, 0], kind="stable")
        ax.plot(front[order, 0], front[order, 1], marker="o", color=color,
                label=f"{label} ({len(front)} on the front of {len(df)})")  # fmt: skip
    ax.set_xlabel(_axis_label(objectives[0]))
    ax.set_ylabel(_axis_label(objectives[1]))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title or "Pareto fronts")
    fig.tight_layout()
    return _save(fig, path)
