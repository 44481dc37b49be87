"""Growth events (seed 004) as flat metrics and back: the one joint of trainable and tracker.

Torch-free, so the MLflow tracker (in the Tune driver) can import it. A run that grows reports, at
the evaluation step where it grew, the event as metrics: ``growth/kind`` (the index of the kind in
:data:`GROWTH_KINDS`), the new size ``growth/params``, ``growth/n_layers``, ``growth/d_model``,
``growth/seq_len``, the old size as the same names with ``_before``, the new base learning rate
``growth/lr`` (after the divide-by-sqrt(2) rule; the warm-up climbs to it), ``growth/lr_before`` and
``growth/freeze_steps``. ``growth/params`` is present exactly at growth steps. The tracker rebuilds
the events from the run's metric history into the artifact :data:`EVENTS_ARTIFACT`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

GROWTH_KINDS = ("depth", "width", "context")  # the codes of ``growth/kind``
SIZE_FIELDS = ("params", "n_layers", "d_model", "seq_len")
EVENTS_ARTIFACT = "growth_events.json"
PREFIX = "growth/"
MARKER = "growth/params"  # reported exactly at the evaluations where the model grew
_SCALARS = ("lr", "lr_before", "freeze_steps")
EVENT_METRICS = frozenset(
    {f"{PREFIX}kind"}
    | {f"{PREFIX}{f}" for f in SIZE_FIELDS}
    | {f"{PREFIX}{f}_before" for f in SIZE_FIELDS}
    | {f"{PREFIX}{s}" for s in _SCALARS}
)


def event_metrics(event: Mapping[str, Any]) -> dict[str, float]:
    """The flat metrics of one event (``kind``, ``old``/``new`` sizes, ``lr``...; see module doc).

    Sizes a model's config does not have (None) are left out.
    """
    kind = event["kind"]
    out = {f"{PREFIX}kind": float(GROWTH_KINDS.index(kind)) if kind in GROWTH_KINDS else -1.0}
    for name in SIZE_FIELDS:
        for side, suffix in (("new", ""), ("old", "_before")):
            value = event[side].get(name)
            if value is not None:
                out[f"{PREFIX}{name}{suffix}"] = float(value)
    for name in _SCALARS:
        if event.get(name) is not None:
            out[f"{PREFIX}{name}"] = float(event[name])
    return out


def _int(value: float | None) -> int | None:
    return None if value is None or math.isnan(value) else round(value)


def event_from_metrics(step: int, metrics: Mapping[str, float]) -> dict[str, Any]:
    """The event that :func:`event_metrics` encoded into ``metrics`` at ``step``."""
    code = _int(metrics.get(f"{PREFIX}kind"))
    kind = GROWTH_KINDS[code] if code is not None and 0 <= code < len(GROWTH_KINDS) else "unknown"
    event: dict[str, Any] = {"step": int(step), "kind": kind}
    event["old"] = {f: _int(metrics.get(f"{PREFIX}{f}_before")) for f in SIZE_FIELDS}
    event["new"] = {f: _int(metrics.get(f"{PREFIX}{f}")) for f in SIZE_FIELDS}
    event["lr_before"] = metrics.get(f"{PREFIX}lr_before")
    event["lr"] = metrics.get(f"{PREFIX}lr")
    event["freeze_steps"] = _int(metrics.get(f"{PREFIX}freeze_steps"))
    return event


def events_from_history(history: Mapping[str, Mapping[int, float]]) -> list[dict[str, Any]]:
    """All events of a run from its metric history (``{name: {step: value}}``), by step."""
    steps = sorted(history.get(MARKER, {}))
    return [
        event_from_metrics(step, {n: h[step] for n, h in history.items() if step in h})
        for step in steps
    ]
