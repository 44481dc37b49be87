"""One trial's child run as the tracker keeps and writes it: its record, params, best values,
growth events and the files of its last checkpoint.

:class:`orchestrator.tracking.SweepTracker` holds a :class:`TrialRun` per trial and calls these
helpers; names and paths are :mod:`orchestrator.run_layout`'s.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections import ChainMap
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.growth_events import EVENT_METRICS as GROWTH_EVENT_METRICS
from trainables.growth_events import EVENTS_ARTIFACT as GROWTH_EVENTS_ARTIFACT
from trainables.growth_events import events_from_history

from .run_layout import (
    ARTIFACTS_DIR,
    MAX_KEY,
    PACKED_DIR,
    PACKED_MODEL,
    PARAMS_PER_BATCH,
    RUNNING,
    best_value,
    encode_param,
    metric_history,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from .analysis import Objective

log = logging.getLogger(__name__)


@dataclass
class TrialRun:
    """What the tracker knows about one trial's child run."""

    trial_id: str
    run_id: str
    params: Mapping[str, Any] = field(default_factory=dict)  # as given, typed (params_view)
    last_step: int = -1  # the highest step already in MLflow
    full_history: bool = True  # False when reused: steps before this process are not in `best`
    best: dict[str, float] = field(default_factory=dict)
    status: str = RUNNING
    stop_seen: bool = False  # a result arrived with done=True: Tune (a scheduler) ended it
    stopped_early: bool = False
    checkpoint: tuple[str, Any] | None = None  # (path, pyarrow filesystem or None)
    # PBT cloned another trial's checkpoint into this one: the next result starts a new lineage
    # at an earlier step, so it is logged even at steps this run already holds
    rewound: bool = False

    def short(self) -> bool:
        """Whether the trial ended before its planned ``train.steps`` (or has no plan)."""
        planned = self.params.get("train.steps")
        try:
            return planned is None or self.last_step < int(planned)
        except (TypeError, ValueError):
            return True


def params_view(params: Mapping[str, Any], base: dict[str, Any]) -> Mapping[str, Any]:
    """``params`` kept as the values that differ from ``base`` over a shared ``base``.

    A sweep's trials share most of their ~100 params (the base run config) and differ in the
    few sampled ones; the tracker keeps every trial's params for the whole sweep, so it keeps
    each only once (issue 17: a flat driver). An empty ``base`` is filled from ``params`` (the
    first trial's). Params that lack a key of ``base`` are kept whole: a view would show the
    base's value for it. Values equal in type and value are shared (``1`` is not ``1.0``).
    """
    if not params:
        return {}
    if not base:
        base.update(params)
    if not base.keys() <= params.keys():
        return dict(params)
    own = {
        key: value
        for key, value in params.items()
        if key not in base or type(base[key]) is not type(value) or base[key] != value
    }
    return ChainMap(own, base)


def release_artifact_repo(run_id: str) -> None:
    """Drop MLflow's cached artifact repository of an ended run (issue 17: a flat driver).

    ``MlflowClient`` caches a repository per run it wrote artifacts to, each with a thread pool
    and an async-logging queue, for up to 1,024 runs per process: an ended trial's run is not
    written again (a restarted trial's next write builds a new one). Pending async writes are
    flushed first. A no-op where MLflow keeps no such cache.
    """
    from mlflow.tracking._tracking_service import utils

    cache = getattr(utils, "_artifact_repos_cache", None)
    if not isinstance(cache, MutableMapping):
        return
    repo = cache.pop(run_id, None)
    if repo is None:
        return
    try:
        repo.flush_async_logging()
    except Exception as err:  # the write itself failed: MLflow's own warning names it
        log.warning("artifact upload of run %s did not finish: %s", run_id, err)
    pool = getattr(repo, "thread_pool", None)
    if pool is not None:
        pool.shutdown(wait=False)


def new_params(params: Mapping[str, Any], logged: Mapping[str, str]) -> dict[str, str]:
    """The encoded params still to log on a run that holds ``logged``.

    MLflow refuses to change a param: a value that differs from the logged one keeps the first
    (with a warning), as a resumed trial whose config changed does.
    """
    todo: dict[str, str] = {}
    for key, value in params.items():
        key, text = str(key)[:MAX_KEY], encode_param(value)
        if key not in logged:
            todo[key] = text
        elif logged[key] != text:
            log.warning("param %s changed on resume; keeping %r", key, logged[key])
    return todo


def log_params(
    client: MlflowClient, run_id: str, params: Mapping[str, Any], logged: Mapping[str, str]
) -> None:
    """Log the :func:`new_params` of a run, in batches within MLflow's limit."""
    from mlflow.entities import Param

    todo = [Param(k, v) for k, v in new_params(params, logged).items()]
    for i in range(0, len(todo), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=todo[i : i + PARAMS_PER_BATCH])


def last_logged_step(client: MlflowClient, run: Run) -> int:
    """The highest step a run has metrics at (-1 for none)."""
    if "step" in run.data.metrics:  # logged with every result, so its latest is the last step
        return int(run.data.metrics["step"])
    if not run.data.metrics:
        return -1
    key = next(iter(run.data.metrics))
    return max((step for step, _ in metric_history(client, run.info.run_id, key)), default=-1)


def update_best(
    best: dict[str, float], metrics: Mapping[str, float], objectives: Iterable[Objective]
) -> None:
    """Fold one result's ``metrics`` into ``best`` (objective -> best value so far)."""
    for name, mode in objectives:
        value = metrics.get(name)
        if value is not None and not math.isnan(value):
            best[name] = best_value([best[name], value] if name in best else [value], mode)


def log_growth_events(client: Any, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
    """Rewrite the run's ``growth_events.json`` from its ``growth/*`` metric history (seed 004).

    Rebuilt from what MLflow holds (plus this step's ``metrics``), so it stays complete when a
    restored sweep's tracker did not see the earlier growths.
    """
    history = {
        name: dict(metric_history(client, run_id, name)) for name in sorted(GROWTH_EVENT_METRICS)
    }
    for name in GROWTH_EVENT_METRICS & metrics.keys():
        history[name][step] = metrics[name]
    events = events_from_history(history)
    client.log_text(run_id, json.dumps(events, indent=2), GROWTH_EVENTS_ARTIFACT)


def local_checkpoint_dir(
    path: str, filesystem: Any, tmp: Path, name: str = PACKED_DIR
) -> Path | None:
    """A local folder with the checkpoint's ``name/`` (downloaded into ``tmp`` if remote)."""
    import pyarrow.fs as pafs

    if filesystem is None and "://" in path:
        filesystem, path = pafs.FileSystem.from_uri(path)
    if filesystem is None or isinstance(filesystem, pafs.LocalFileSystem):
        local = Path(path) / name
        return local if local.is_dir() else None
    source = f"{path.rstrip('/')}/{name}"
    if filesystem.get_file_info(source).type != pafs.FileType.Directory:
        return None
    target = tmp / name
    pafs.copy_files(
        source,
        str(target),
        source_filesystem=filesystem,
        destination_filesystem=pafs.LocalFileSystem(),
    )
    return target


def storage_filesystem(path: str, storage_path: str | None) -> Any:
    """The pyarrow filesystem of a scheme-less checkpoint path on remote storage (s3://, gs://),
    or None for a local path or a URI.

    Train V2 reports ``checkpoint_path`` relative to its storage filesystem ("bucket/..."), so the
    sweep's ``storage_path`` URI tells which filesystem that is.
    """
    if "://" in path or not storage_path or "://" not in storage_path:
        return None
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(storage_path)[0]


def upload_checkpoint(client: Any, run_id: str, path: str, filesystem: Any) -> list[str]:
    """Log a checkpoint's packed model as ``model/packed`` and its ``artifacts/`` (seed 003's
    self-generated JSONL and filter counts) at the run's artifact root; returns what was found."""
    uploaded = []
    for name, target in ((PACKED_DIR, PACKED_MODEL), (ARTIFACTS_DIR, None)):
        with tempfile.TemporaryDirectory(prefix="bitsweep-packed-") as tmp:
            local = local_checkpoint_dir(path, filesystem, Path(tmp), name)
            if local is None:
                log.debug("run %s: no %s/ in checkpoint %s", run_id, name, path)
                continue
            client.log_artifacts(run_id, str(local), target)
            uploaded.append(name)
    return uploaded
