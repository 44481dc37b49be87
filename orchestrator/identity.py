"""Sweep identity: every ``bitsweep run`` is a new sweep with its own id, results and study.

A sweep has a *name* (the preset, the file's stem, ``name:`` or ``--name``) and an *id*, the name
plus a short random suffix (``demo-3f9a1c``). The id names Tune's experiment folder
(``storage.path/<id>``), the Optuna study and the MLflow parent run (tag ``bitsweep.sweep_id``);
the name stays in the tag ``bitsweep.sweep``, so ``report demo`` reads the newest sweep named
``demo``. Continuing a sweep (``bitsweep resume``, ``run --continue``) is the only way two
runs share an id.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import NoSavedSweepError

SPEC_FILE = "bitsweep_sweep.yaml"  # the resolved sweep beside its results (sweep_folder.py)


def new_sweep_id(name: str) -> str:
    """``name`` plus a 6-hex-digit random suffix: a new id for each run of the same name."""
    return f"{name}-{secrets.token_hex(3)}"


def with_new_id(spec: Any, name: str | None = None) -> Any:
    """``spec`` (a SweepSpec) renamed to ``name`` when given, with a fresh sweep id."""
    from orchestrator.spec import NAME_PATTERN, SweepSpecError

    if name is not None and not NAME_PATTERN.match(name):
        raise SweepSpecError(
            [("--name", f"{name!r}: use letters, digits, '_', '-' or '.' (at most 100 characters)")]
        )
    final = name or spec.name
    return spec.model_copy(update={"name": final, "sweep_id": new_sweep_id(final)})


@dataclass
class SavedSweep:
    """A sweep found under a storage location: its id, name, folder and modification time."""

    sweep_id: str
    name: str
    folder: str
    mtime: float


def _location(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def saved_sweeps(storage: str) -> list[SavedSweep]:
    """Every sweep with a saved sweep file under ``storage`` (local path or URI), newest first."""
    import pyarrow.fs as pafs
    import yaml

    location = _location(storage)
    try:
        filesystem, root = pafs.FileSystem.from_uri(location)
        entries = filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except (OSError, ValueError):
        return []
    found: list[SavedSweep] = []
    for entry in entries:
        if entry.type != pafs.FileType.Directory:
            continue
        info = filesystem.get_file_info(f"{entry.path}/{SPEC_FILE}")
        if info.type != pafs.FileType.File:
            continue
        try:
            with filesystem.open_input_stream(info.path) as stream:
                document = yaml.safe_load(stream.read().decode()) or {}
        except (OSError, yaml.YAMLError):
            continue
        sweep_id = str(document.get("sweep_id") or entry.base_name)
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        found.append(SavedSweep(sweep_id, str(document.get("name") or sweep_id), entry.path, mtime))
    return sorted(found, key=lambda s: s.mtime, reverse=True)


def resolve_saved(name_or_id: str, storage: str) -> str:
    """The folder of the sweep ``name_or_id`` under ``storage``: an exact id (or, for sweeps
    made before ids, folder name) first, else the newest sweep of that name.

    Raises NoSavedSweepError (a FileNotFoundError) naming what exists when there is none.
    """
    location = _location(storage)
    sweeps = saved_sweeps(storage)
    for sweep in sweeps:  # an exact id (a sweep made before ids has its folder's name as id)
        if sweep.sweep_id == name_or_id and sweep.sweep_id != sweep.name:
            return sweep.folder
    for sweep in sweeps:
        if sweep.name == name_or_id:
            return sweep.folder
    listed = ", ".join(f"{s.sweep_id} ({s.name})" for s in sweeps[:10]) or "none"
    raise NoSavedSweepError(
        f"no sweep named {name_or_id!r} under {location} (sweeps there: {listed}); pass "
        "--storage with the sweep's storage.path, or see `bitsweep list`"
    )


def list_sweeps(tracking_uri: str | None, experiment: str) -> list[dict[str, Any]]:
    """Past sweeps from MLflow's parent runs, newest first: name, id, date, status, best value
    of the first objective and the parent run id."""
    import json
    import time

    from mlflow import MlflowClient

    from orchestrator import run_layout as layout
    from orchestrator.tracking_uri import check_readable, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    check_readable(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id],
        layout.SWEEPS_FILTER,
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )
    rows = []
    for run in runs:
        tags = run.data.tags
        try:
            objectives = json.loads(tags.get(layout.TAG_OBJECTIVES, "[]"))
        except ValueError:
            objectives = []
        metric = objectives[0][0] if objectives else None
        best = run.data.metrics.get(f"{layout.BEST_PREFIX}{metric}") if metric else None
        start = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
        rows.append(
            {
                "name": tags.get(layout.TAG_SWEEP, run.info.run_name),
                "id": tags.get(layout.TAG_SWEEP_ID, run.info.run_name),
                "date": start,
                "status": tags.get(layout.TAG_STATUS, run.info.status.lower()),
                "best": "-" if best is None else f"{metric} {best:.4g}",
                "trials": int(run.data.metrics.get("sweep/trials", 0) or 0) or "-",
                "parent_run": run.info.run_id,
            }
        )
    return rows
