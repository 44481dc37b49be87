"""Plots of a sweep's results: ablation heatmaps, Pareto fronts, learning curves, learned
bit-widths, exit-layer distributions and growth timelines.

Every ``*_figure``/``*_plot``/``learning_curves``/``growth_timeline`` function returns a matplotlib
:class:`~matplotlib.figure.Figure` and, given a ``path``, also saves it as a PNG. Figures are made
without pyplot's global state, so a long-running Tune driver never accumulates open figures; in a
Jupyter kernel they display with ``display(fig)`` or as a cell's last value. ``ablation_heatmap``
and ``pareto_plot`` are the file-only forms the tracker writes to the parent run.

Tables come from :mod:`orchestrator.results`: the trial table (one row per trial, final metrics as
columns such as ``bits/<layer>`` and ``route/exit_frac/<layer>``) and the long-form metric history
(``trial_id``, ``run_id``, ``metric``, ``step``, ``value``).
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .analysis import Objective, TableLike, as_frame, objective_matrix, pareto_front
from .layer_plots import bit_widths_plot, exit_distribution_plot
from .plot_common import (
    BITS_PREFIX,
    DPI,
    EXIT_PREFIX,
    HISTORY_COLUMNS,
    _colors,
    _fmt,
    _label,
    _save,
    _trial_label,
    _trial_legend,
    natural_key,
    prefixed_columns,
)

__all__ = [
    "BITS_PREFIX",
    "DPI",
    "EXIT_PREFIX",
    "HISTORY_COLUMNS",
    "ablation_figure",
    "ablation_heatmap",
    "bit_widths_plot",
    "exit_distribution_plot",
    "growth_timeline",
    "learning_curves",
    "natural_key",
    "pareto_figure",
    "pareto_plot",
    "prefixed_columns",
]


def ablation_figure(
    mean: pd.DataFrame,
    std: pd.DataFrame,
    path: str | Path | None = None,
    *,
    title: str | None = None,
    value: str | None = None,
    count: pd.DataFrame | None = None,
    subtitle: str | None = None,
) -> Figure:
    """The ablation matrix as a heatmap, each cell annotated ``mean ± std`` (and ``n=`` with
    ``count``); empty cells (NaN mean) are blank. Saved as PNG when ``path`` is given.

    ``subtitle`` goes under the title, wrapped: what each cell averages over
    (:meth:`orchestrator.ablation_keys.CellKeys.describe`).

    ``mean``, ``std`` and ``count`` come from :func:`orchestrator.analysis.ablation_matrix` and
    :func:`~orchestrator.analysis.ablation_counts` (or :meth:`SweepResults.ablation`).
    """
    values = mean.to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    # rows split by other keys carry long labels ("BitLinear · rmsnorm_post_attn=True"): widen
    longest = max((len(_label(r)) for r in mean.index), default=0)
    width = 1.6 * n_cols + 2.0 + 0.07 * max(0, longest - 12)
    # constrained, not tight: tight_layout leaves the colorbar's label outside the figure
    fig = Figure(figsize=(max(4.0, width), max(3.0, 0.8 * n_rows + 1.8)), layout="constrained")
    ax = fig.subplots()
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
        color = "white" if m < middle else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(n_cols), [_label(c) for c in mean.columns])
    ax.set_yticks(range(n_rows), [_label(r) for r in mean.index])
    ax.set_xlabel(str(mean.columns.name or ""))
    ax.set_ylabel(str(mean.index.name or ""))
    heading = title or (f"{value}: mean ± std" if value else "mean ± std")
    if subtitle:
        # over the whole figure, not the axes: long row labels leave the axes narrow
        wrapped = textwrap.fill(subtitle, width=int(13 * fig.get_figwidth()))
        fig.suptitle(f"{heading}\n{wrapped}", fontsize=9)
    else:
        ax.set_title(heading)
    return _save(fig, path)


def ablation_heatmap(
    mean: pd.DataFrame,
    std: pd.DataFrame,
    path: str | Path,
    *,
    title: str | None = None,
    value: str | None = None,
    count: pd.DataFrame | None = None,
    subtitle: str | None = None,
) -> Path:
    """Save :func:`ablation_figure` as a PNG at ``path``; returns the path."""
    ablation_figure(mean, std, path, title=title, value=value, count=count, subtitle=subtitle)
    return Path(path)


# ---- Pareto front --------------------------------------------------------------------------------


def _axis_label(objective: Objective) -> str:
    name, mode = objective
    return f"{name} ({'lower' if mode == 'min' else 'higher'} is better)"


def pareto_figure(
    table: TableLike,
    objectives: Sequence[Objective],
    path: str | Path | None = None,
    *,
    front: pd.DataFrame | None = None,
    title: str | None = None,
) -> Figure:
    """Every trial and the Pareto front for 2 objectives (one panel) or 3 (pairwise panels).

    With two objectives the front is drawn as a line through its points; with three, each
    panel projects all trials and highlights the front's points.
    """
    if len(objectives) not in (2, 3):
        raise ValueError(f"pareto_plot draws 2 or 3 objectives, got {len(objectives)}")
    df = as_frame(table)
    if front is None:
        front = pareto_front(df, objectives)
    raw = objective_matrix(df, [(name, "min") for name, _ in objectives])
    front_raw = objective_matrix(front, [(name, "min") for name, _ in objectives])
    pairs = list(itertools.combinations(range(len(objectives)), 2))
    fig = Figure(figsize=(5.0 * len(pairs), 4.2))
    axes = fig.subplots(1, len(pairs), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs, strict=True):
        ax.scatter(raw[:, a], raw[:, b], s=22, color="0.6", label="trials")
        ax.scatter(
            front_raw[:, a], front_raw[:, b], s=40, color="tab:red", zorder=3, label="Pareto front"
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
    return _save(fig, path)


def pareto_plot(
    table: TableLike,
    objectives: Sequence[Objective],
    path: str | Path,
    *,
    front: pd.DataFrame | None = None,
    title: str | None = None,
) -> Path:
    """Save :func:`pareto_figure` as a PNG at ``path``; returns the path."""
    pareto_figure(table, objectives, path, front=front, title=title)
    return Path(path)


# ---- metric histories ----------------------------------------------------------------------------


def _check_history(history: pd.DataFrame) -> None:
    missing = [c for c in ("trial_id", "metric", "step", "value") if c not in history]
    if missing:
        raise ValueError(
            f"expected a long-form history (SweepResults.history) with columns "
            f"{list(HISTORY_COLUMNS)}; missing {missing}"
        )


def _step_axis(ax: Axes) -> None:
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.grid(True, alpha=0.3)


def _series(history: pd.DataFrame, trial_id: str, metric: str) -> pd.DataFrame:
    rows = history[(history["trial_id"] == trial_id) & (history["metric"] == metric)]
    return rows.sort_values("step", kind="stable")


def learning_curves(
    history: pd.DataFrame,
    path: str | Path | None = None,
    *,
    metrics: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    title: str | None = None,
    max_legend: int = 12,
) -> Figure:
    """Each metric against ``step``, one panel per metric and one line per trial.

    ``history`` is :meth:`SweepResults.history`'s long form; ``metrics`` picks and orders the
    panels (default: every metric in it); ``labels`` maps trial ids to legend text. Sweeps with
    more than ``max_legend`` trials get no legend (it would hide the curves).
    """
    _check_history(history)
    names = list(metrics) if metrics is not None else list(dict.fromkeys(history["metric"]))
    absent = [m for m in names if m not in set(history["metric"])]
    if not names or absent:
        raise ValueError(f"no history for metrics {absent or names}; fetch them with history()")
    trials = sorted(dict.fromkeys(history["trial_id"]), key=natural_key)
    colors = _colors(len(trials))
    cols = min(len(names), 3)
    n_rows = -(-len(names) // cols)
    fig = Figure(figsize=(5.0 * cols, 3.6 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, names, strict=False):
        for color, trial in zip(colors, trials, strict=True):
            rows = _series(history, trial, metric)
            if len(rows):
                label = _trial_label(trial, labels)
                ax.plot(rows["step"], rows["value"], marker=".", color=color, label=label)
        _step_axis(ax)
        ax.set_ylabel(metric)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    _trial_legend(fig, axes[0], len(trials), max_legend)
    fig.suptitle(title or f"learning curves ({len(trials)} trials)")
    return _save(fig, path)


def growth_timeline(
    history: pd.DataFrame,
    path: str | Path | None = None,
    *,
    metric: str = "val/loss",
    stage_metric: str = "growth/stage",
    labels: Mapping[str, str] | None = None,
    title: str | None = None,
    max_legend: int = 12,
) -> Figure:
    """The ``metric`` curve of each trial with a dashed vertical line, in the trial's color,
    at every step where ``growth/stage`` increased (the model grew there).

    ``history`` must hold both metrics (``results.history([metric, stage_metric])``).
    """
    _check_history(history)
    if metric not in set(history["metric"]):
        raise ValueError(f"no history for {metric!r}; fetch it with history([{metric!r}, ...])")
    trials = sorted(dict.fromkeys(history["trial_id"]), key=natural_key)
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    grown = 0
    for color, trial in zip(_colors(len(trials)), trials, strict=True):
        curve = _series(history, trial, metric)
        ax.plot(curve["step"], curve["value"], color=color, label=_trial_label(trial, labels))
        stages = _series(history, trial, stage_metric)
        previous = stages["value"].shift(1)
        for step, stage in stages[stages["value"] > previous][["step", "value"]].itertuples(
            index=False
        ):
            ax.axvline(step, color=color, linestyle="--", linewidth=1.0, alpha=0.8)
            ax.annotate(
                f"stage {int(stage)}",
                (step, 1.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                ha="right",
                fontsize=7,
                color=color,
            )
            grown += 1
    _step_axis(ax)
    ax.set_ylabel(metric)
    _trial_legend(fig, ax, len(trials), max_legend)
    ax.set_title(title or f"{metric} and growth events ({grown} in {len(trials)} trials)")
    return _save(fig, path)


# ---- per-layer final values ----------------------------------------------------------------------
