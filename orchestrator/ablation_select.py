"""Which trials an ablation matrix compares, and the sentence that says so.

A trial ASHA stopped at step 50 and a trial that ran all 300 steps are not comparable by their
final values. By default a matrix takes finished trials only; with ``at_step`` it compares every
trial that reached that step (finished and stopped early alike) by its value there. Failed trials
never add a value, but keep their cell so a grid keeps its shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pandas as pd

from orchestrator.run_layout import FINISHED, STOPPED_EARLY

# (run_id, metric) -> [(step, value), ...]
History = Callable[[str, str], Sequence[tuple[int, float]]]


def select_values(
    table: pd.DataFrame, value: str, *, at_step: int | None = None, history: History | None = None
) -> tuple[pd.DataFrame, str]:
    """``table`` with ``value`` kept only where the matrix may use it, and the label saying which.

    Default: finished trials' final values. ``at_step``: each non-failed trial's value logged at
    exactly that step (``history`` reads it); trials without one add nothing.
    """
    out = table.copy()
    if value not in out:
        return out, "finished trials only"
    status = out["status"] if "status" in out else pd.Series(FINISHED, index=out.index)
    if at_step is None:
        values = pd.to_numeric(out[value], errors="coerce").astype(float)
        out[value] = values.where(status == FINISHED, math.nan)
        stopped = int((status == STOPPED_EARLY).sum())
        left = f" ({stopped} stopped early left out)" if stopped else ""
        return out, f"finished trials only{left}"
    if history is None:
        raise ValueError("comparing at a step needs the trials' metric histories")
    at: list[float] = []
    for index, row in out.iterrows():
        found = math.nan
        if status[index] in (FINISHED, STOPPED_EARLY) and row.get("run_id"):
            for step, logged in history(str(row["run_id"]), value):
                if int(step) == at_step:
                    found = float(logged)
        at.append(found)
    out[value] = at
    reached = sum(not math.isnan(v) for v in at)
    return out, f"every trial at step {at_step} ({reached} reached it; finished and stopped early)"
