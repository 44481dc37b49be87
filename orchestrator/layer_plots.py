"""Per-layer plots of a sweep: learned bit-widths and the exit-layer distribution per trial.

Split from :mod:`orchestrator.plots`, which re-exports both functions.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .analysis import TableLike, as_frame
from .plot_common import (
    BITS_PREFIX,
    EXIT_PREFIX,
    _colors,
    _save,
    _select_trials,
    _trial_label,
    _trial_legend,
    prefixed_columns,
)


def _layer_matrix(
    table: TableLike, prefix: str, trial_ids: Sequence[str] | None, what: str
) -> pd.DataFrame:
    """Trials x layers of the final ``<prefix><layer>`` metrics (index: trial ids)."""
    df = _select_trials(as_frame(table), trial_ids)
    columns = prefixed_columns(df, prefix)
    if not columns:
        raise ValueError(f"the trial table has no {prefix}<layer> columns: {what}")
    index = df.get("trial_id", df.index)
    matrix = df[columns].apply(pd.to_numeric, errors="coerce")
    matrix.index = pd.Index(list(index), name="trial_id")
    matrix.columns = pd.Index([c[len(prefix) :] for c in columns], name="layer")
    return matrix.dropna(how="all")


def _grouped_bars(
    fig: Figure, ax: Axes, matrix: pd.DataFrame, labels: Mapping[str, str] | None
) -> None:
    n_trials, n_layers = matrix.shape
    width = 0.8 / max(1, n_trials)
    x = np.arange(n_layers)
    for k, (color, (trial, row)) in enumerate(
        zip(_colors(n_trials), matrix.iterrows(), strict=True)
    ):
        offset = (k - (n_trials - 1) / 2) * width
        ax.bar(
            x + offset,
            row.to_numpy(dtype=float),
            width,
            color=color,
            label=_trial_label(trial, labels),
        )
    _layer_ticks(ax, [str(c) for c in matrix.columns])
    ax.grid(True, axis="y", alpha=0.3)
    _trial_legend(fig, ax, n_trials, 12)


def _layer_ticks(ax: Axes, names: Sequence[str]) -> None:
    """Layer names under the x axis, slanted and right-aligned to their tick when long or many
    (centered slanted labels ran into each other and off the figure)."""
    slant = len(names) > 6 or max((len(n) for n in names), default=0) > 10
    ax.set_xticks(range(len(names)), list(names))
    if slant:
        for label in ax.get_xticklabels():
            label.set(rotation=40, ha="right", rotation_mode="anchor")


def _label_room(names: Sequence[str], fontsize: float = 10.0) -> float:
    """Inches that slanted labels of ``names`` take below (or beside) an axis."""
    longest = max((len(n) for n in names), default=0)
    return 0.65 * longest * fontsize / 72 + 0.3


def bit_widths_plot(
    table: TableLike,
    path: str | Path | None = None,
    *,
    trial_ids: Sequence[str] | None = None,
    kind: Literal["auto", "bars", "heatmap"] = "auto",
    labels: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """Learned per-layer bit-widths (the final ``bits/<layer>`` metrics) of the chosen trials.

    ``bars``: one group of bars per layer, a bar per trial; ``heatmap``: trials x layers with each
    width written in its cell; ``auto``: bars for up to 6 trials, else the heatmap.
    """
    matrix = _layer_matrix(
        table, BITS_PREFIX, trial_ids, "the sweep has no learnable bit-widths (adaptive scheme)"
    )
    if kind == "auto":
        kind = "bars" if len(matrix) <= 6 else "heatmap"
    n_trials, n_layers = matrix.shape
    layer_names = [str(c) for c in matrix.columns]
    trial_names = [_trial_label(t, labels) for t in matrix.index]
    if kind == "bars":
        # room for the slanted layer names and one legend row per trial (long labels: 1 column)
        width = min(16.0, max(6.0, 0.5 * n_layers * max(1, n_trials) ** 0.5 + 3.0))
        legend_rows = n_trials if max(map(len, trial_names), default=0) > 40 else -(-n_trials // 3)
        height = 3.2 + _label_room(layer_names) + 0.22 * legend_rows
        fig = Figure(figsize=(width, height), layout="constrained")
        ax = fig.subplots()
        _grouped_bars(fig, ax, matrix, labels)
        ax.set_ylabel("learned bits (rounded)")
    elif kind == "heatmap":
        height = max(3.0, 0.35 * n_trials + 1.0) + _label_room(layer_names)
        width = min(18.0, max(5.0, 0.7 * n_layers + 2.5) + _label_room(trial_names))
        fig = Figure(figsize=(width, height), layout="constrained")
        ax = fig.subplots()
        values = matrix.to_numpy(dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, label="bits")
        finite = values[np.isfinite(values)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        if values.size <= 400:  # beyond that the numbers overlap; the colors still tell
            for i, j in itertools.product(range(n_trials), range(n_layers)):
                v = values[i, j]
                if np.isfinite(v):
                    color = "white" if v < middle else "black"
                    ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=7, color=color)
        _layer_ticks(ax, layer_names)
        ax.set_yticks(range(n_trials), trial_names)
        ax.set_ylabel("trial")
    else:
        raise ValueError(f"kind must be 'auto', 'bars' or 'heatmap', got {kind!r}")
    ax.set_xlabel("layer")
    ax.set_title(title or f"learned bit-widths per layer ({n_trials} trials)")
    return _save(fig, path)


def exit_distribution_plot(
    table: TableLike,
    path: str | Path | None = None,
    *,
    trial_ids: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """Where early-exit inference leaves the model: the final ``route/exit_frac/<layer>`` of the
    chosen trials as grouped bars (fraction of validation tokens per exit layer, 1..L)."""
    matrix = _layer_matrix(table, EXIT_PREFIX, trial_ids, "the sweep's models have no early exits")
    size = (max(5.0, 0.6 * matrix.shape[1] + 3.0), 4.0 + 0.15 * len(matrix))
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.subplots()
    _grouped_bars(fig, ax, matrix, labels)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("exit layer")
    ax.set_ylabel("fraction exiting")
    ax.set_title(title or f"exit-layer distribution ({len(matrix)} trials)")
    return _save(fig, path)
