"""What every plot module shares: the headless backend, saving, labels, colors, trial selection.

Split from :mod:`orchestrator.plots` (which re-exports the public names) to keep each module small.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from orchestrator.run_layout import HISTORY_COLUMNS as HISTORY_COLUMNS

DPI = 110
BITS_PREFIX = "bits/"
EXIT_PREFIX = "route/exit_frac/"


def _use_backend() -> None:
    """Agg (headless) everywhere but a Jupyter kernel, whose inline backend shows the figures.

    The plots are written by the Tune driver, a CI job or a cluster node with no display. In a
    kernel, loading the inline backend through pyplot is what registers the PNG formatter that
    lets ``display(fig)`` draw a pyplot-free Figure.
    """
    if "ipykernel" in sys.modules:
        try:
            import matplotlib.pyplot as plt

            plt.switch_backend(matplotlib.get_backend())
            return
        except Exception:  # a GUI backend without a display: fall back to files only
            pass
    matplotlib.use("Agg")


_use_backend()


def _fmt(value: float) -> str:
    """Short numbers for cell labels: 4 significant digits."""
    return f"{value:.4g}"


def _label(key: object) -> str:
    if isinstance(key, tuple):
        return ",".join(str(k) for k in key)
    return str(key)


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    return fig


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``layers.2`` before ``layers.10`` (digit runs compare as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def prefixed_columns(table: pd.DataFrame, prefix: str) -> list[str]:
    """The columns named ``prefix<something>`` in natural order (``bits/layers.0`` ...)."""
    return sorted((str(c) for c in table.columns if str(c).startswith(prefix)), key=natural_key)


def _colors(n: int) -> list[Any]:
    """The default cycle for a few lines; evenly spaced viridis colors for many."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def _select_trials(table: pd.DataFrame, trial_ids: Sequence[str] | None) -> pd.DataFrame:
    if trial_ids is None or "trial_id" not in table:
        return table
    known = set(table["trial_id"])
    missing = [t for t in trial_ids if t not in known]
    if missing:
        raise ValueError(f"unknown trial ids {missing}; the table has {sorted(known)}")
    order = {t: i for i, t in enumerate(trial_ids)}
    chosen = table[table["trial_id"].isin(order)]
    return chosen.iloc[np.argsort([order[t] for t in chosen["trial_id"]], kind="stable")]


def _trial_label(trial_id: str, labels: Mapping[str, str] | None) -> str:
    return str(labels.get(trial_id, trial_id)) if labels else str(trial_id)


def _trial_legend(fig: Figure, ax: Axes, n_trials: int, max_legend: int) -> None:
    """One legend under the plots (long labels would hide the data inside an axis); none for
    sweeps with more than ``max_legend`` trials, whose curves the colors tell apart."""
    if n_trials > max_legend:
        return
    handles, texts = ax.get_legend_handles_labels()
    if handles:
        ncols = 1 if max(len(t) for t in texts) > 40 else min(3, len(texts))
        fig.legend(handles, texts, loc="outside lower center", ncols=ncols, fontsize=7)


# ---- ablation heatmap ----------------------------------------------------------------------------
