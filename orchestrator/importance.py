"""Which searched keys mattered: parameter importance and a parallel-coordinates plot.

Importance is Optuna's fANOVA (Hutter et al., "An Efficient Approach for Assessing
Hyperparameter Importance", ICML 2014) computed on an in-memory study rebuilt from the sweep's
finished trials, so it works on any MLflow store and for every search algorithm (random and grid
sweeps included). Stopped-early trials are left out: their final values come from fewer steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .run_layout import FINISHED, STOPPED_EARLY, completed

MIN_TRIALS = 3


def _finished(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = table[table["status"] == FINISHED] if "status" in table else table
    values = pd.to_numeric(rows.get(metric), errors="coerce") if metric in rows else None
    if values is None:
        return rows.iloc[0:0]
    return rows[values.notna()]


def _distribution(values: pd.Series, space: dict[str, Any] | None) -> Any:
    import optuna

    dist = (space or {}).get("dist")
    numeric = pd.to_numeric(values, errors="coerce")
    if dist in ("uniform", "loguniform", "int") or (numeric.notna().all() and dist is None):
        low = float(space["low"]) if space and "low" in space else float(numeric.min())
        high = float(space["high"]) if space and "high" in space else float(numeric.max())
        low, high = min(low, float(numeric.min())), max(high, float(numeric.max()))
        if high <= low:
            return None
        return optuna.distributions.FloatDistribution(low, high, log=dist == "loguniform")
    choices = tuple(sorted({str(v) for v in values}))
    return optuna.distributions.CategoricalDistribution(choices) if len(choices) > 1 else None


def parameter_importance(
    table: pd.DataFrame,
    keys: Sequence[str],
    metric: str,
    mode: str,
    space: dict[str, Any] | None = None,
    *,
    seed: int = 0,
) -> pd.Series:
    """fANOVA importance of each searched key for ``metric`` over the finished trials (sums to
    1, largest first). Raises ValueError when fewer than 3 finished trials or no varied key."""
    import optuna

    rows = _finished(table, metric)
    if len(rows) < MIN_TRIALS:
        raise ValueError(
            f"parameter importance needs {MIN_TRIALS} finished trials with {metric}, "
            f"got {len(rows)}"
        )
    distributions = {}
    for key in keys:
        if key in rows:
            found = _distribution(rows[key], (space or {}).get(key))
            if found is not None:
                distributions[key] = found
    if not distributions:
        raise ValueError("parameter importance needs a searched key whose value varied")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    for _, row in rows.iterrows():
        params = {}
        for key, dist in distributions.items():
            value = row[key]
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                value = str(value)
            else:
                value = float(value)
            params[key] = value
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=float(row[metric])
            )
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    scores = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return pd.Series(scores, name=f"importance for {metric}", dtype=float)


def importance_plot(importance: pd.Series, path: str | Path | None = None) -> Figure:
    """Horizontal bars of :func:`parameter_importance`, largest on top."""
    from orchestrator.plot_common import _save

    ordered = importance.sort_values()
    fig = Figure(figsize=(6.0, 1.2 + 0.4 * len(ordered)), layout="constrained")
    ax = fig.subplots()
    ax.barh([str(k) for k in ordered.index], ordered.to_numpy(dtype=float), color="tab:blue")
    ax.set_xlabel("fANOVA importance (share of variance)")
    ax.set_title(str(importance.name or "parameter importance"))
    ax.set_xlim(0, 1)
    return _save(fig, path)


def parallel_coordinates(
    table: pd.DataFrame,
    keys: Sequence[str],
    metric: str,
    path: str | Path | None = None,
    *,
    mode: str = "min",
) -> Figure:
    """One line per non-failed trial across the searched keys and the metric, colored by the
    metric (darker is better); each axis is scaled to its own range, text values to their
    sorted order. Stopped-early trials are dashed."""
    rows = completed(table)
    columns = [k for k in keys if k in rows] + [metric]
    if metric not in rows or len(rows) == 0:
        raise ValueError(f"no trial reported {metric!r}")
    scaled = np.zeros((len(rows), len(columns)))
    ticks: list[tuple[list[float], list[str]]] = []
    for j, column in enumerate(columns):
        raw = rows[column]
        numeric = pd.to_numeric(raw, errors="coerce")
        if numeric.notna().all():
            low, high = float(numeric.min()), float(numeric.max())
            span = high - low or 1.0
            scaled[:, j] = (numeric.to_numpy(dtype=float) - low) / span
            ticks.append(([0.0, 1.0], [f"{low:.3g}", f"{high:.3g}"]))
        else:
            levels = sorted({str(v) for v in raw})
            position = {v: i / max(1, len(levels) - 1) for i, v in enumerate(levels)}
            scaled[:, j] = [position[str(v)] for v in raw]
            ticks.append(([position[v] for v in levels], levels))
    values = pd.to_numeric(rows[metric], errors="coerce").to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    goodness = (
        (high - values) / ((high - low) or 1.0)
        if mode == "min"
        else (values - low) / ((high - low) or 1.0)
    )
    fig = Figure(figsize=(max(6.0, 1.8 * len(columns)), 4.5), layout="constrained")
    ax = fig.subplots()
    import matplotlib

    cmap = matplotlib.colormaps["viridis_r"]
    statuses = list(rows["status"]) if "status" in rows else [FINISHED] * len(rows)
    for i in range(len(rows)):
        color = cmap(0.5 if math.isnan(goodness[i]) else float(goodness[i]))
        style = "--" if statuses[i] == STOPPED_EARLY else "-"
        ax.plot(range(len(columns)), scaled[i], style, color=color, alpha=0.8, linewidth=1.4)
    for j, (positions, labels) in enumerate(ticks):
        ax.axvline(j, color="0.6", linewidth=0.8)
        for y, text in zip(positions, labels, strict=True):
            ax.text(j, y, f" {text}", fontsize=7, va="center", ha="left", color="0.2")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(columns) - 0.6)
    ax.set_title(f"searched keys and {metric} (darker: better; dashed: stopped early)")
    from orchestrator.plot_common import _save

    return _save(fig, path)
