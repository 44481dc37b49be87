"""The bit LM's telemetry drift events (seed 004) in a trial's MLflow run.

At a result that reports a drift (``telemetry/drift``), the run's ``telemetry_events.json`` is
rewritten from its ``telemetry/drift*`` metric history (complete after a restore, like the growth
events); a drift that halted the trial (``telemetry/halted``) tags the run with
``bitsweep.stop_reason``, and the tracker ends it as stopped early.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trainables.telemetry_events import (
    CHANGE_PREFIX,
    EVENT_METRICS,
    EVENTS_ARTIFACT,
    HALTED,
    MARKER,
    STOP_REASON_TAG,
    drift_reason,
    events_from_history,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


def log_drift_events(
    client: MlflowClient,
    run_id: str,
    step: int,
    metrics: Mapping[str, float],
    params: Mapping[str, Any],
) -> bool:
    """Write the run's drift events if ``metrics`` report one; True when the trial halted."""
    if MARKER not in metrics:
        return False
    from mlflow.entities import RunTag

    history = {
        name: {m.step: m.value for m in client.get_metric_history(run_id, name)}
        for name in sorted(EVENT_METRICS)
    }
    for name in EVENT_METRICS & metrics.keys():
        history[name][step] = metrics[name]
    client.log_text(run_id, json.dumps(events_from_history(history), indent=2), EVENTS_ARTIFACT)
    if metrics.get(HALTED, 0.0) <= 0:
        return False
    changes = {
        f"telemetry/{name.removeprefix(CHANGE_PREFIX)}": value
        for name, value in metrics.items()
        if name.startswith(CHANGE_PREFIX)
    }
    reason = drift_reason(changes, params.get("telemetry.drift_window"),
                          params.get("telemetry.drift_thresh"))  # fmt: skip
    client.log_batch(run_id, tags=[RunTag(STOP_REASON_TAG, f"step {step}: {reason}")])
    return True
