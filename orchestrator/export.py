"""``bitsweep best NAME --export FILE``: a sweep's best trial as a runnable one-trial sweep file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.spec import RUN_SECTIONS, build_sweep
from trainables.config import unflatten


def best_trial_document(results: Any, objective: str | None = None) -> dict[str, Any]:
    """The sweep file of ``results``' best trial (by ``objective``, default the first): its run
    config as the sweep's config, nothing searched, one sample, no scheduler; validated."""
    spec = results.spec()
    if spec is None:
        raise ValueError(f"sweep {results.name!r} has no sweep.yaml in MLflow to export from")
    row = results.best(objective)
    flat = {}
    for key, value in row.items():
        in_run = isinstance(key, str) and "." in key and key.split(".", 1)[0] in RUN_SECTIONS
        missing = isinstance(value, float) and value != value  # NaN: a key this trial lacked
        if in_run and not missing:
            flat[key] = value.item() if hasattr(value, "item") else value  # numpy -> plain
    search = dict(spec.get("search") or {})
    kept = {k: search[k] for k in ("metric", "mode", "objectives", "seed") if k in search}
    document: dict[str, Any] = {
        "name": f"{spec.get('name') or results.name}-best",
        "description": f"best trial {row['trial_id']} of sweep {results.name} "
        f"(MLflow run {row['run_id']})",
        **unflatten(flat),
        "search": {
            "algorithm": "random",
            "num_samples": 1,
            **kept,
            "space": {},
            "scheduler": {"type": "none"},
        },
    }
    for block in ("resources", "storage", "tracking"):
        if block in spec:
            document[block] = spec[block]
    build_sweep(document)  # raises SweepSpecError if the export would not run
    return document


def export_best(results: Any, path: str | Path, objective: str | None = None) -> Path:
    """Write :func:`best_trial_document` to ``path`` as YAML; returns the path."""
    target = Path(path)
    document = best_trial_document(results, objective)
    target.write_text(yaml.safe_dump(document, sort_keys=False))
    return target
