"""How a sweep looks in the MLflow UI: experiment kind, run names, descriptions, parent metrics.

The layout the tracker writes and ``orchestrator.results`` reads (tags, params, metrics) is
``orchestrator.run_layout``'s; this module only adds what a person browsing the UI sees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from orchestrator.run_layout import FAILED, FINISHED, STOPPED_EARLY

# MLflow 3's UI opens an experiment by this tag; without it a fresh experiment opens as GenAI.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"  # the run's "Description" in the UI
MAX_NAME = 250


def short_value(value: Any) -> str:
    """A searched value as a short label: ``0.0035`` -> ``3.5e-3``, ``0.42`` -> ``0.42``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value == 0 or math.isnan(value):
        return f"{value:g}"
    if abs(value) < 0.01 or abs(value) >= 1e4:
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.3g}"


def child_run_name(params: Mapping[str, Any], searched: Sequence[str], trial_id: str) -> str:
    """A trial's run name from its searched values, e.g. ``hadamard lr=3.5e-3 warmup_frac=0.42``.

    Text values stand alone, numbers as ``<last key part>=<value>``; with nothing searched the
    trial id.
    """
    labels, numbers = [], []
    for key in searched:
        if key not in params:
            continue
        value = params[key]
        if isinstance(value, str):
            labels.append(value)
        else:
            short = key.rsplit(".", 1)[-1].removeprefix("lambda_")
            numbers.append(f"{short}={short_value(value)}")
    return (" ".join(labels + numbers) or trial_id)[:MAX_NAME]


def mark_experiment(client: Any, experiment_id: str) -> None:
    """Tag the experiment so the UI opens it as model training (unless a kind is already set)."""
    experiment = client.get_experiment(experiment_id)
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def mark_trial_state(
    client: Any,
    run_id: str,
    base: str,
    status: str,
    step: int,
    planned: Any,
    reason: str | None = None,
) -> None:
    """Make a trial's end visible in the runs table: ``[stopped early @ 100/300]`` or ``[failed]``
    appended to its name (``base``, from :func:`child_run_name`) and a one-line description.

    Writes only (``update_run``, ``set_tag``), so a buffered client queues them in an outage.
    """
    if status == STOPPED_EARLY:
        step = max(step, 0)  # a trial stopped before its first report trained 0 steps
        of = f"/{planned}" if planned is not None else ""
        label = f"stopped early @ {step}{of}"
        note = f"Stopped early by the scheduler or a stop condition at step {step}{of}."
    elif status == FAILED:
        label = "failed"
        note = "Failed: " + (reason or "see error.txt")
    else:
        label, note = "", f"Finished at step {step}."
    client.update_run(run_id, name=(f"{base} [{label}]" if label else base)[:MAX_NAME])
    client.set_tag(run_id, DESCRIPTION_TAG, note)


def searched_keys(search_block: Mapping[str, Any] | None) -> list[str]:
    """The searched keys of a sweep's ``search`` block (as the tracker stores it)."""
    space = (search_block or {}).get("space")
    return [str(k) for k in space] if isinstance(space, Mapping) else []


def sweep_counts(table: pd.DataFrame) -> dict[str, int]:
    """Trials by status: ``trials``, ``finished``, ``stopped_early``, ``failed``."""
    statuses = table["status"] if "status" in table else pd.Series(dtype=str)
    return {
        "trials": len(table),
        FINISHED: int((statuses == FINISHED).sum()),
        STOPPED_EARLY: int((statuses == STOPPED_EARLY).sum()),
        FAILED: int((statuses == FAILED).sum()),
    }


def log_parent_summary(
    client: Any, run_id: str, table: pd.DataFrame, best: Mapping[str, Any] | None
) -> None:
    """The sweep's counts (``sweep/trials`` ...) and best values (``best/<metric>``) as metrics
    of the parent run, and a one-line description, so sweeps compare in the runs table."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    counts = sweep_counts(table)
    metrics = [Metric(f"sweep/{k}", float(v), now, 0) for k, v in counts.items()]
    lines = [f"{counts['trials']} trials: {counts['finished']} finished, "
             f"{counts['stopped_early']} stopped early, {counts['failed']} failed."]  # fmt: skip
    for metric, entry in ((best or {}).get("best") or {}).items():
        value = entry.get("value")
        if isinstance(value, int | float) and not math.isnan(value):
            metrics.append(Metric(f"best/{metric}", float(value), now, 0))
            lines.append(f"Best {metric}: {value:.4g} (trial {entry.get('trial_id')}).")
    client.log_batch(run_id, metrics=metrics)
    client.set_tag(run_id, DESCRIPTION_TAG, " ".join(lines))
