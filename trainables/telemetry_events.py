"""Telemetry drift events (seed 004) as flat metrics and back: the joint of trainable and tracker.

Torch-free, so the MLflow tracker (in the Tune driver) can import it. At an evaluation where K, C
or S drifted, a bit-LM run reports ``telemetry/drift`` (the number of drifted metrics, the marker)
and ``telemetry/drift/<K|C|S>`` (each change); with ``telemetry.halt_on_drift`` also
``telemetry/halted`` = 1, after which the run stops. The tracker rebuilds the events from the run's
metric history into :data:`EVENTS_ARTIFACT` and tags a halted run with :func:`drift_reason`.
The names are declared in :mod:`trainables.metric_names`.
Files a run leaves in its checkpoint's :data:`ARTIFACTS_DIR` (samples, ``distilled_metrics.json``)
are uploaded to the run's artifacts when the trial ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainables.metric_names import (
    TELEMETRY_DRIFT,
    TELEMETRY_DRIFT_EVENTS,
    TELEMETRY_DRIFT_PREFIX,
    TELEMETRY_HALTED,
    TELEMETRY_METRICS,
)

MARKER = TELEMETRY_DRIFT  # reported exactly at the evaluations where a metric drifted
HALTED = TELEMETRY_HALTED
COUNT = TELEMETRY_DRIFT_EVENTS
CHANGE_PREFIX = TELEMETRY_DRIFT_PREFIX
METRIC_NAMES = TELEMETRY_METRICS
EVENT_METRICS = frozenset({MARKER, HALTED} | {f"{CHANGE_PREFIX}{m}" for m in METRIC_NAMES})
EVENTS_ARTIFACT = "telemetry_events.json"
ARTIFACTS_DIR = "artifacts"  # a checkpoint's folder of files for the run's MLflow artifacts
STOP_REASON_TAG = "bitsweep.stop_reason"


def drift_reason(changes: Mapping[str, float], window: int | None, thresh: float | None) -> str:
    """The one-line stop reason of a drift halt (``changes``: ``{"telemetry/K": +0.31, ...}``)."""
    text = ", ".join(f"{key} changed by {change:+.3f}" for key, change in changes.items())
    over = f" over the last {window} evaluations" if window is not None else ""
    limit = f" (threshold {thresh})" if thresh is not None else ""
    return f"metric drift: {text}{over}{limit}; stopped by telemetry.halt_on_drift"


def event_from_metrics(step: int, metrics: Mapping[str, float]) -> dict[str, Any]:
    """The drift event reported at ``step``."""
    changes = {
        f"telemetry/{m}": float(metrics[f"{CHANGE_PREFIX}{m}"])
        for m in METRIC_NAMES
        if f"{CHANGE_PREFIX}{m}" in metrics
    }
    return {"step": int(step), "changes": changes, "halted": bool(metrics.get(HALTED, 0.0) > 0)}


def events_from_history(history: Mapping[str, Mapping[int, float]]) -> list[dict[str, Any]]:
    """All drift events of a run from its metric history (``{name: {step: value}}``), by step."""
    return [
        event_from_metrics(step, {n: h[step] for n, h in history.items() if step in h})
        for step in sorted(history.get(MARKER, {}))
    ]
