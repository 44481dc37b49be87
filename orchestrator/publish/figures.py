"""The figures of RESULTS.md: bars with error bars, mean curves over seeds, memory lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from orchestrator.plot_common import _colors, _save, _use_backend
from orchestrator.publish.stats import Cell


def bars(cells: Mapping[str, Cell], path: Path, *, ylabel: str, title: str) -> Path:
    """One bar per labelled cell: its mean with ± one std over seeds."""
    _use_backend()
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    labels = list(cells)
    means = [cells[k].mean for k in labels]
    errs = [0.0 if np.isnan(cells[k].std) else cells[k].std for k in labels]
    ax.bar(range(len(labels)), means, yerr=errs, capsize=4, color=_colors(len(labels)))
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    finite = [m for m in means if np.isfinite(m)]
    if finite:  # differences of a few tenths of a percent must be visible
        low, high = min(finite), max(finite)
        pad = max((high - low) * 0.6, max(errs) * 1.5, 1e-3)
        ax.set_ylim(low - pad, high + pad)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return path


def mean_curves(
    history: pd.DataFrame,
    groups: Mapping[str, Sequence[str]],
    path: Path,
    *,
    metric: str,
    title: str,
    panels: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> Path:
    """``metric`` against step, averaged over the trials of each group (label -> trial ids);
    with ``panels`` (panel title -> groups) one panel each."""
    _use_backend()
    layout = dict(panels) if panels else {"": groups}
    fig = Figure(figsize=(5.0 * len(layout), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(layout), squeeze=False)[0])
    data = history[history["metric"] == metric]
    for ax, (panel, panel_groups) in zip(axes, layout.items(), strict=True):
        for (label, trials), color in zip(
            panel_groups.items(), _colors(len(panel_groups)), strict=True
        ):
            rows = data[data["trial_id"].isin(list(trials))]
            if rows.empty:
                continue
            curve = rows.groupby("step")["value"].agg(["mean", "std"]).reset_index()
            ax.plot(curve["step"], curve["mean"], color=color, label=f"{label} (n={len(trials)})")
            spread = curve["std"].fillna(0)
            ax.fill_between(
                curve["step"],
                curve["mean"] - spread,
                curve["mean"] + spread,
                color=color,
                alpha=0.15,
            )
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(panel or title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if panels:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return path


def points(
    series: Mapping[str, tuple[Cell, Cell]], path: Path, *, xlabel: str, ylabel: str, title: str
) -> Path:
    """One point per labelled cell pair (x cell, y cell) with ± std error bars on both axes."""
    _use_backend()
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.subplots()
    for (label, (x, y)), color in zip(series.items(), _colors(len(series)), strict=True):
        ax.errorbar(
            [x.mean],
            [y.mean],
            xerr=[np.nan_to_num(x.std)],
            yerr=[np.nan_to_num(y.std)],
            fmt="o",
            color=color,
            capsize=3,
            label=label,
        )
    return _finish(fig, ax, path, xlabel, ylabel, title, legend_size=7)


def lines(
    series: Mapping[str, Mapping[float, Cell]], path: Path, *, xlabel: str, ylabel: str, title: str
) -> Path:
    """One line per label through its cells (x -> cell), with ± std error bars."""
    _use_backend()
    fig = Figure(figsize=(5.6, 3.8))
    ax = fig.subplots()
    for (label, by_x), color in zip(series.items(), _colors(len(series)), strict=True):
        xs = sorted(by_x)
        ax.errorbar(
            xs,
            [by_x[x].mean for x in xs],
            yerr=[np.nan_to_num(by_x[x].std) for x in xs],
            marker="o",
            color=color,
            capsize=3,
            label=label,
        )
    return _finish(fig, ax, path, xlabel, ylabel, title, legend_size=8)


def metric_panels(history: pd.DataFrame, metrics: Sequence[str], path: Path, *, title: str) -> Path:
    """One panel per metric: its mean over the trials in ``history`` against step (± std)."""
    _use_backend()
    fig = Figure(figsize=(4.2 * len(metrics), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)[0])
    for ax, metric, color in zip(axes, metrics, _colors(len(metrics)), strict=True):
        rows = history[history["metric"] == metric]
        if not rows.empty:
            curve = rows.groupby("step")["value"].agg(["mean", "std"]).reset_index()
            spread = curve["std"].fillna(0)
            ax.plot(curve["step"], curve["mean"], color=color)
            ax.fill_between(
                curve["step"],
                curve["mean"] - spread,
                curve["mean"] + spread,
                color=color,
                alpha=0.15,
            )
        ax.set_xlabel("step")
        ax.set_title(metric, fontsize=10)
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return path


def _finish(
    fig: Figure, ax: Axes, path: Path, xlabel: str, ylabel: str, title: str, *, legend_size: int
) -> Path:
    """Label, grid and legend one-panel figure ``fig``, then write it to ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    _save(fig, path)
    return path
