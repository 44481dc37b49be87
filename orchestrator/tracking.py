"""MLflow tracking of a sweep: one parent run per sweep, one child run per Tune trial.

Everything is written from the Tune driver process (DESIGN.md): :class:`SweepTracker` owns the
MLflow client and the runs, :class:`MLflowTuneCallback` feeds it from Tune's callback hooks. A
restored sweep finds its parent run by the ``bitsweep.sweep`` tag and its child runs by
``bitsweep.trial_id``, and skips steps it already logged, so nothing is duplicated.

The layout (parent tags and artifacts, child params, metrics and statuses) is what
``orchestrator.results`` and the notebooks read back; change both together.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd
from ray.tune import Callback

from trainables.growth_events import EVENT_METRICS as GROWTH_EVENT_METRICS
from trainables.growth_events import EVENTS_ARTIFACT as GROWTH_EVENTS_ARTIFACT
from trainables.growth_events import MARKER as GROWTH_MARKER
from trainables.growth_events import events_from_history
from trainables.run_tags import run_tags

from . import __version__
from .ablation_select import select_values
from .analysis import Objective, ablation_table, matrices_from_table, pareto_front
from .naming import child_run_name, log_parent_summary, mark_trial_state, searched_keys
from .study import link_run
from .telemetry_tracking import log_drift_events

if TYPE_CHECKING:
    import pyarrow.fs
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from ray.tune.experiment import Trial

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "bitsweep"
PACKED_DIR = "packed"  # the sub-directory of a final checkpoint that holds the packed model
ARTIFACTS_DIR = "artifacts"  # a checkpoint's files for the run's artifact root (trainables)
# MLflow's limits (mlflow.utils.validation): checked here so a long value never fails a batch.
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000

# The trial table's leading columns; params and metrics follow.
TABLE_KEYS = ("trial_id", "run_id", "status", "error")
# Values of the ``bitsweep.status`` tag.
RUNNING, FINISHED, STOPPED_EARLY, FAILED = "running", "finished", "stopped_early", "failed"


class TrackingUnreachableError(RuntimeError):
    """The MLflow tracking server or store cannot be used; the message names the URI and the fix."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri`` if given, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _local_store_path(uri: str) -> Path | None:
    """The file or folder a local store URI points at (None for non-local schemes)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute.db; sqlite:// alone is in-memory.
        rest = uri[len("sqlite://") :]
        return Path(rest[1:]) if rest.startswith("/") else None
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a Windows drive)
        return Path(uri)
    return None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, if the tracking URI cannot be used.

    http(s): a short GET of ``/health`` (then the experiments API); sqlite and file stores: the
    folder must be writable. Raises :class:`TrackingUnreachableError` naming the URI and the fix.
    """
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("http", "https"):
        _check_http(uri, timeout)
        return
    path = _local_store_path(uri)
    if path is None:
        return  # databricks, postgresql, ...: the MLflow client reports its own errors
    target = path if path.exists() else path.parent
    while not target.exists() and target != target.parent:
        target = target.parent
    if target != path and not target.is_dir():
        raise TrackingUnreachableError(
            f"MLflow store {uri} cannot be created: {target} is a file, not a folder; set "
            "tracking.uri in the sweep file or MLFLOW_TRACKING_URI to a path in a folder"
        )
    if not os.access(target, os.W_OK):
        raise TrackingUnreachableError(
            f"MLflow store {uri} is not writable ({target} is read-only): run from a writable "
            "folder, or set tracking.uri in the sweep file or MLFLOW_TRACKING_URI to another store"
        )


def _check_http(uri: str, timeout: float) -> None:
    base = uri.rstrip("/") + "/"
    reason = ""
    for probe in ("health", "api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            with urllib.request.urlopen(urllib.parse.urljoin(base, probe), timeout=timeout):
                return
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code != 404:
                return  # it answers (perhaps asking for credentials): MLflow's client takes over
            reason = f"HTTP {err.code} from /{probe.split('?')[0]}"
        except (urllib.error.URLError, OSError) as err:
            reason = str(getattr(err, "reason", err))
            break  # nothing listens: the second probe would fail the same way
    raise TrackingUnreachableError(
        f"MLflow tracking server {uri} is unreachable ({reason}): start it (mlflow server --host "
        "127.0.0.1 --port 5000) or set tracking.uri in the sweep file or MLFLOW_TRACKING_URI to "
        "a running server"
    )


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The params of a Tune trial config: the trial's dotted run config.

    A config with a ``run_config`` mapping is a bitsweep trial: ``orchestrator.trials`` owns its
    layout (scenario overrides, the scenario label). Any other config is flattened whole.
    """
    if isinstance(config.get("run_config"), Mapping):
        try:
            from .trials import trial_params as bitsweep_trial_params

            return bitsweep_trial_params(dict(config))
        except (ImportError, KeyError, TypeError):
            return flatten_config(config["run_config"])
    return flatten_config(config)


def encode_param(value: Any) -> str:
    """An MLflow param value: a string as is, anything else as JSON (``true``, ``[2, 4]``)."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            text = str(value)
    return text[:MAX_PARAM_VALUE]


def decode_param(text: str) -> Any:
    """Undo :func:`encode_param` where the text is JSON; other strings stay strings."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def contract_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics-contract values of a Tune result: numeric keys containing ``/``, and ``step``.

    Tune's own bookkeeping (``training_iteration``, ``time_this_iter_s``, ...) is left out.
    """
    metrics: dict[str, float] = {}
    for key, value in result.items():
        if not (isinstance(key, str) and ("/" in key or key == "step")):
            continue
        if isinstance(value, bool) or not hasattr(value, "__float__"):
            continue
        try:
            metrics[key[:MAX_KEY]] = float(value)
        except (TypeError, ValueError):
            continue
    return metrics


def git_commit() -> str | None:
    """The commit of the bitsweep source tree, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


@dataclass
class _TrialRun:
    """What the tracker knows about one trial's child run."""

    trial_id: str
    run_id: str
    params: dict[str, Any] = field(default_factory=dict)  # as given, typed
    last_step: int = -1  # the highest step already in MLflow
    full_history: bool = True  # False when reused: steps before this process are not in `best`
    best: dict[str, float] = field(default_factory=dict)
    status: str = RUNNING
    stop_seen: bool = False  # a result arrived with done=True: Tune (a scheduler) ended it
    stopped_early: bool = False
    checkpoint: tuple[str, Any] | None = None  # (path, pyarrow filesystem or None)


@dataclass
class SweepSummary:
    """What :meth:`SweepTracker.finish` wrote: the tables behind the parent's artifacts."""

    parent_run_id: str
    trial_table: pd.DataFrame
    ablations: dict[str, tuple[pd.DataFrame, pd.DataFrame]]
    pareto_front: pd.DataFrame | None
    best_trial: dict[str, Any] | None
    artifacts: list[str]
    warnings: list[str]

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access; ``best`` and ``pareto`` are short for the fields above."""
        key = {"best": "best_trial", "pareto": "pareto_front"}.get(key, key)
        return getattr(self, key, default)


class SweepTracker:
    """Writes one sweep to MLflow: a parent run and a child run per trial, all from one process.

    Construct it with the sweep's description, call :meth:`start` before training (it checks the
    URI and creates or reuses the parent run; any other method starts it when needed), feed
    trials through :class:`MLflowTuneCallback` (or the ``trial_*`` methods), and call
    :meth:`finish` at the end. It pickles (Tune stores its callbacks in ``tuner.pkl``): an
    unpickled tracker reconnects on :meth:`start` and continues the same parent run.
    """

    def __init__(
        self,
        sweep: str,
        *,
        tracking_uri: str | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
        objectives: Sequence[Objective] = (),
        preset: str | None = None,
        sweep_yaml: str | None = None,
        search_space: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        reuse: bool = True,
        storage_filesystem: pyarrow.fs.FileSystem | None = None,
        storage_path: str | None = None,
    ) -> None:
        if not sweep or any(q in sweep for q in "'\"`"):
            raise ValueError(f"sweep name {sweep!r} must be non-empty and free of quotes")
        self.sweep = sweep
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.objectives: list[Objective] = [(str(m), mode) for m, mode in objectives]
        self.preset = preset
        self.sweep_yaml = sweep_yaml
        self.search_space = dict(search_space) if search_space is not None else None
        self.extra_tags = dict(tags or {})
        self.reuse = reuse
        self.storage_filesystem = storage_filesystem
        self.storage_path = storage_path
        # one id per run of a name (orchestrator.identity); the parent run is named by it
        self.sweep_id: str | None = self.extra_tags.get("bitsweep.sweep_id")
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self.resumed = False
        self._client: MlflowClient | None = None
        self._trials: dict[str, _TrialRun] = {}
        self._existing: dict[str, Run] = {}  # child runs found in MLflow, not yet touched

    @classmethod
    def for_sweep(cls, spec: Any, uri: str | None = None, **kwargs: Any) -> SweepTracker:
        """A tracker for a validated sweep spec (``orchestrator.spec.SweepSpec``).

        Takes the name, experiment, objectives, preset, resolved YAML, the ``search`` block and
        the storage path from ``spec``; ``kwargs`` (``reuse``, ``tags``, ...) pass through.
        """
        search = spec.search
        objectives = [(o.metric, o.mode) for o in search.objective_list]
        space = search.model_dump(mode="json", exclude_none=True)
        if getattr(spec, "sweep_id", None):
            kwargs["tags"] = {"bitsweep.sweep_id": spec.sweep_id, **(kwargs.get("tags") or {})}
        return cls(
            spec.name,
            tracking_uri=uri or spec.tracking.uri,
            experiment=spec.tracking.experiment,
            objectives=objectives,
            preset=spec.preset,
            sweep_yaml=spec.to_yaml(),
            search_space=space,
            **{"storage_path": getattr(spec, "storage_path", None), **kwargs},
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_client=None, _trials={}, _existing={})
        state["reuse"] = True  # an unpickled tracker continues its sweep
        return state

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has connected this tracker to its parent run."""
        return self._client is not None and self.parent_run_id is not None

    @property
    def uri(self) -> str:
        """The resolved tracking URI."""
        return self.tracking_uri

    @property
    def client(self) -> MlflowClient:
        """The MLflow client; the first use starts the tracker (:meth:`start`)."""
        if self._client is None:
            self.start()
        return cast("MlflowClient", self._client)

    def start(self) -> str:
        """Check the URI, then create the parent run or reuse this sweep's; returns its run id.

        Raises :class:`TrackingUnreachableError` (naming the URI) when MLflow cannot be used.
        Calling it again is a no-op.
        """
        if self.started:
            return self.parent_run_id
        check_reachable(self.tracking_uri)
        # Printing run URLs to stdout would garble the CLI's live progress view.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        from mlflow import MlflowClient

        from .write_buffer import buffered

        # writes that fail while the store is away wait on disk in the sweep's folder (replayed)
        client = buffered(MlflowClient(self.tracking_uri), getattr(self, "buffer_dir", None))
        self._client = client
        self.experiment_id = self._experiment_id()
        parent = self._find_parent()
        if parent is None:
            tags = {"bitsweep.role": "sweep", "bitsweep.sweep": self.sweep, **self.extra_tags}
            name = self.sweep_id or self.sweep
            parent = client.create_run(self.experiment_id, run_name=name, tags=tags)
            self.resumed = False
        else:
            self.resumed = True
            if parent.info.status != "RUNNING":
                client.update_run(parent.info.run_id, status="RUNNING")
        self.parent_run_id = parent.info.run_id
        self._log_parent_description()
        self._existing = {r.data.tags["bitsweep.trial_id"]: r for r in self._children()}
        return self.parent_run_id

    def _experiment_id(self) -> str:
        from .naming import mark_experiment

        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            experiment_id = self.client.create_experiment(self.experiment)
            mark_experiment(self.client, experiment_id)  # opens as model training, not GenAI
            return experiment_id
        if found.lifecycle_stage == "deleted":
            raise TrackingUnreachableError(
                f"MLflow experiment {self.experiment!r} at {self.tracking_uri} is deleted: restore "
                "it (mlflow experiments restore) or set tracking.experiment to another name"
            )
        return found.experiment_id

    def _find_parent(self) -> Run | None:
        if self.parent_run_id is not None:  # an unpickled tracker knows its run
            run = self.client.get_run(self.parent_run_id)
            if run.info.lifecycle_stage == "active":
                return run
        if not self.reuse:
            return None
        tag, value = ("bitsweep.sweep", self.sweep)
        if self.sweep_id:
            tag, value = "bitsweep.sweep_id", self.sweep_id
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{tag}` = '{value}' and tags.`bitsweep.role` = 'sweep'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def _log_parent_description(self) -> None:
        from mlflow.entities import RunTag

        tags = {
            "bitsweep.role": "sweep",
            "bitsweep.sweep": self.sweep,
            "bitsweep.version": __version__,
            "bitsweep.objectives": json.dumps([list(o) for o in self.objectives]),
            "bitsweep.status": RUNNING,
        }
        commit = git_commit()
        if commit:
            tags["bitsweep.git_commit"] = tags["mlflow.source.git.commit"] = commit
        if self.preset:
            tags["bitsweep.preset"] = self.preset
        tags.update(self.extra_tags)
        run_tags = [RunTag(k[:MAX_KEY], str(v)[:MAX_TAG_VALUE]) for k, v in tags.items()]
        self.client.log_batch(self.parent_run_id, tags=run_tags)
        if self.sweep_yaml is not None:
            self.client.log_text(self.parent_run_id, self.sweep_yaml, "sweep.yaml")
        if self.search_space is not None:
            self.client.log_dict(self.parent_run_id, self.search_space, "search_space.json")

    def _children(self) -> list[Run]:
        """Every child run of the parent (all pages)."""
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
                max_results=1000,
                page_token=token,
            )
            runs.extend(r for r in page if "bitsweep.trial_id" in r.data.tags)
            token = page.token
            if not token:
                return runs

    # ---- trials -------------------------------------------------------------------------------

    def knows(self, trial_id: str) -> bool:
        """Whether the trial has a child run (made or found by this tracker)."""
        return trial_id in self._trials or trial_id in self._existing

    def _trial(self, trial_id: str, params: Mapping[str, Any] | None = None) -> _TrialRun:
        """The trial's child run: known, found in MLflow (resume) or created now."""
        if trial_id in self._trials:
            return self._trials[trial_id]
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        self.start()
        params = dict(params or {})
        found = self._existing.pop(trial_id, None)
        if found is None:
            tags = {
                MLFLOW_PARENT_RUN_ID: self.parent_run_id,
                "bitsweep.role": "trial",
                "bitsweep.sweep": self.sweep,
                "bitsweep.trial_id": trial_id,
                "bitsweep.status": RUNNING,
                **run_tags(params),  # seed 003's stage / source / model tags (hf_causal_lm)
            }
            run_name = child_run_name(params, searched_keys(self.search_space), trial_id)
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
            record = _TrialRun(trial_id, run.info.run_id, params)
            self._log_params(record.run_id, params, {})
        else:
            record = _TrialRun(trial_id, found.info.run_id, params, full_history=False)
            record.last_step = self._last_logged_step(found)
            record.status = found.data.tags.get("bitsweep.status", RUNNING)
            self._log_params(record.run_id, params, found.data.params)
        self._trials[trial_id] = record
        link_run(trial_id, record.run_id)  # the Optuna trial's mlflow_run_id (orchestrator.study)
        return record

    def _last_logged_step(self, run: Run) -> int:
        if "step" in run.data.metrics:  # logged with every result, so its latest is the last step
            return int(run.data.metrics["step"])
        if not run.data.metrics:
            return -1
        key = next(iter(run.data.metrics))
        return max(
            (m.step for m in self.client.get_metric_history(run.info.run_id, key)), default=-1
        )

    def _log_params(
        self, run_id: str, params: Mapping[str, Any], logged: Mapping[str, str]
    ) -> None:
        from mlflow.entities import Param

        todo = []
        for key, value in params.items():
            key, text = str(key)[:MAX_KEY], encode_param(value)
            if key in logged:
                if logged[key] != text:  # MLflow refuses to change a param: keep the first value
                    log.warning(
                        "param %s of run %s changed on resume; keeping %r", key, run_id, logged[key]
                    )
                continue
            todo.append(Param(key, text))
        for i in range(0, len(todo), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=todo[i : i + PARAMS_PER_BATCH])

    def _set_status(self, record: _TrialRun, status: str, run_status: str | None) -> None:
        from mlflow.entities import RunTag

        record.status = status
        self.client.log_batch(record.run_id, tags=[RunTag("bitsweep.status", status)])
        if run_status == "RUNNING":
            self.client.update_run(record.run_id, status="RUNNING")
        elif run_status is not None:
            self.client.set_terminated(record.run_id, status=run_status)

    def trial_started(self, trial_id: str, params: Mapping[str, Any]) -> str:
        """Open (or, for a restored trial, reopen) the trial's child run; returns its run id."""
        record = self._trial(trial_id, params)
        record.params = dict(params) or record.params
        record.stop_seen = False
        if record.status == FAILED:  # restarted after an error: the old reason no longer holds
            self.client.delete_tag(record.run_id, "bitsweep.error")
        if record.status != RUNNING or not record.full_history:
            self._set_status(record, RUNNING, "RUNNING")
        return record.run_id

    def log_result(
        self, trial_id: str, result: Mapping[str, Any], params: Mapping[str, Any] | None = None
    ) -> int:
        """Log a reported result's contract metrics at ``step``; returns how many were logged.

        Steps at or below the highest one already in MLflow are skipped, so a trial restored from
        a checkpoint does not log its replayed steps twice. ``done=True`` in a result means Tune
        (a scheduler or stopper) ended the trial; a ``checkpoint_path`` is kept for the artifacts.
        """
        from mlflow.entities import Metric

        record = self._trial(trial_id, params)
        if result.get("done"):
            record.stop_seen = True
        if isinstance(result.get("checkpoint_path"), str):
            record.checkpoint = (result["checkpoint_path"], None)
        metrics = contract_metrics(result)
        step = int(result["step"]) if "step" in result else int(result.get("training_iteration", 0))
        if not metrics or step <= record.last_step:
            return 0
        now = int(time.time() * 1000)
        entries = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(entries), METRICS_PER_BATCH):
            self.client.log_batch(record.run_id, metrics=entries[i : i + METRICS_PER_BATCH])
        record.last_step = step
        for name, mode in self.objectives:
            value = metrics.get(name)
            if value is not None and not math.isnan(value):
                old = record.best.get(name)
                better = old is None or (value < old if mode == "min" else value > old)
                record.best[name] = value if better else old
        if GROWTH_MARKER in metrics:  # the model grew at this step (seed 004)
            self._log_growth_events(record, step, metrics)
        # bit_lm: K, C or S drifted (seed 004); a halting drift ends the trial as stopped early
        if log_drift_events(self.client, record.run_id, step, metrics, record.params):
            record.stopped_early = True
        return len(entries)

    def _log_growth_events(
        self, record: _TrialRun, step: int, metrics: Mapping[str, float]
    ) -> None:
        """Rewrite the run's ``growth_events.json`` from its ``growth/*`` metric history.

        Rebuilt from what MLflow holds (plus this step), so it stays complete when a restored
        sweep's tracker did not see the earlier growths.
        """
        history = {
            name: {m.step: m.value for m in self.client.get_metric_history(record.run_id, name)}
            for name in sorted(GROWTH_EVENT_METRICS)
        }
        for name in GROWTH_EVENT_METRICS & metrics.keys():
            history[name][step] = metrics[name]
        events = events_from_history(history)
        self.client.log_text(record.run_id, json.dumps(events, indent=2), GROWTH_EVENTS_ARTIFACT)

    def set_checkpoint(
        self, trial_id: str, path: str, filesystem: pyarrow.fs.FileSystem | None = None
    ) -> None:
        """Remember the trial's latest checkpoint (local path, URI, or path on ``filesystem``)."""
        self._trial(trial_id).checkpoint = (str(path), filesystem)

    def mark_stopped_early(self, trial_id: str) -> None:
        """Record that a scheduler stopped this trial; :meth:`trial_finished` tags it so."""
        self._trial(trial_id).stopped_early = True

    def trial_finished(self, trial_id: str, *, stopped_early: bool | None = None) -> str:
        """End the trial's run as FINISHED, tagged ``finished`` or ``stopped_early``.

        Stopped early when marked (:meth:`mark_stopped_early`), or when ``stopped_early`` is
        None and Tune ended it (a ``done`` result) before its ``train.steps``. The packed model of
        its last checkpoint is uploaded as ``model/packed``. Returns the status tag.
        """
        record = self._trial(trial_id)
        if stopped_early is None:
            stopped_early = record.stopped_early or (record.stop_seen and self._short(record))
        self._upload_packed(record)
        status = STOPPED_EARLY if stopped_early else FINISHED
        self._set_status(record, status, "FINISHED")
        mark_trial_state(self.client, record.run_id, self._run_name(record), status,
                         record.last_step, record.params.get("train.steps"))  # fmt: skip
        return status

    @staticmethod
    def _short(record: _TrialRun) -> bool:
        planned = record.params.get("train.steps")
        try:
            return planned is None or record.last_step < int(planned)
        except (TypeError, ValueError):
            return True

    def trial_failed(self, trial_id: str, error: str, details: str | None = None) -> None:
        """End the trial's run as FAILED with ``bitsweep.error`` = ``error`` (one line).

        ``details`` (a traceback) is kept as the run's ``error.txt`` artifact.
        """
        from mlflow.entities import RunTag

        record = self._trial(trial_id)
        reason = (error or "unknown error")[:MAX_TAG_VALUE]
        self.client.log_batch(record.run_id, tags=[RunTag("bitsweep.error", reason)])
        if details:
            self.client.log_text(record.run_id, details, "error.txt")
        self._set_status(record, FAILED, "FAILED")
        mark_trial_state(self.client, record.run_id, self._run_name(record), FAILED,
                         record.last_step, None, reason)  # fmt: skip

    def _run_name(self, record: _TrialRun) -> str:
        """The child run's name from its searched values (orchestrator.naming)."""
        return child_run_name(record.params, searched_keys(self.search_space), record.trial_id)

    def _upload_packed(self, record: _TrialRun) -> None:
        if record.checkpoint is None:
            return
        path, filesystem = record.checkpoint
        # the packed model as model/packed; the trial's data artifacts (seed 003's
        # self-generated JSONL and filter counts) from <checkpoint>/artifacts/ at the run's root
        for name, target in ((PACKED_DIR, "model/packed"), (ARTIFACTS_DIR, None)):
            with tempfile.TemporaryDirectory(prefix="bitsweep-packed-") as tmp:
                fs = filesystem or self._storage_fs(path)
                local = _local_packed_dir(path, fs, Path(tmp), name)
                if local is None:
                    log.debug("trial %s: no %s/ in checkpoint %s", record.trial_id, name, path)
                    continue
                self.client.log_artifacts(record.run_id, str(local), target)

    def _storage_fs(self, path: str) -> pyarrow.fs.FileSystem | None:
        """The filesystem of a scheme-less checkpoint path on remote storage (s3://, gs://).

        Train V2 reports ``checkpoint_path`` relative to its storage filesystem ("bucket/..."),
        so the sweep's ``storage_path`` URI tells which filesystem that is.
        """
        if self.storage_filesystem is not None or "://" in path:
            return self.storage_filesystem
        if self.storage_path and "://" in self.storage_path:
            import pyarrow.fs as pafs

            self.storage_filesystem = pafs.FileSystem.from_uri(self.storage_path)[0]
        return self.storage_filesystem

    # ---- the end ------------------------------------------------------------------------------

    def trial_table(self) -> pd.DataFrame:
        """One row per child run: ``trial_id``, ``run_id``, ``status``, params, final metrics.

        Params keep the types they were given in this process (decoded from MLflow's strings for
        trials of an earlier one); ``best/<metric>`` holds each objective's best value over steps.
        """
        self.start()
        rows = []
        for run in sorted(self._children(), key=lambda r: r.data.tags["bitsweep.trial_id"]):
            trial_id = run.data.tags["bitsweep.trial_id"]
            record = self._trials.get(trial_id)
            params = {k: decode_param(v) for k, v in run.data.params.items()}
            if record is not None:
                params.update(record.params)
            row: dict[str, Any] = {
                "trial_id": trial_id,
                "run_id": run.info.run_id,
                "status": run.data.tags.get("bitsweep.status", RUNNING),
                "error": run.data.tags.get("bitsweep.error"),
                **params,
                **run.data.metrics,
            }
            for name, mode in self.objectives:
                row[f"best/{name}"] = self._best(run, record, name, mode)
            rows.append(row)
        return pd.DataFrame(rows, columns=None if rows else list(TABLE_KEYS))

    def _best(self, run: Run, record: _TrialRun | None, name: str, mode: str) -> float:
        if record is not None and record.full_history:
            return record.best.get(name, math.nan)
        values = [m.value for m in self.client.get_metric_history(run.info.run_id, name)]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return math.nan
        return min(values) if mode == "min" else max(values)

    def finish(
        self,
        trial_table: pd.DataFrame | None = None,
        ablations: Iterable[Mapping[str, str] | Any] = (),
        objectives: Sequence[Objective] | None = None,
        *,
        failed: bool = False,
        error: str | None = None,
    ) -> SweepSummary:
        """Write the parent's result artifacts and end it (FINISHED, or FAILED with ``failed``).

        Artifacts: ``trials.parquet``; per ablation ``ablation/<name>.parquet``/``.csv`` (one row
        per trial: ids, keys, value), ``<name>_cells.parquet``/``.csv`` (one row per matrix cell:
        keys, mean, std, count) and ``.png``; for 2+ objectives ``pareto/front.parquet``,
        ``.csv`` and ``.png``; ``best_trial.json``. An ablation naming a missing column is skipped
        with a warning in the summary rather than losing the sweep's other results.
        """
        from mlflow.entities import RunTag

        table = self.trial_table() if trial_table is None else trial_table
        objectives = list(self.objectives if objectives is None else objectives)

        def history(run_id: str, metric: str) -> list[tuple[int, float]]:
            return [(m.step, m.value) for m in self.client.get_metric_history(run_id, metric)]

        with tempfile.TemporaryDirectory(prefix="bitsweep-sweep-") as tmp:
            summary = write_sweep_artifacts(Path(tmp), table, ablations, objectives, history)
            self.client.log_artifacts(self.parent_run_id, tmp)

        log_parent_summary(self.client, self.parent_run_id, table, summary.get("best_trial"))
        tags = [RunTag("bitsweep.status", FAILED if failed else FINISHED)]
        if error:
            tags.append(RunTag("bitsweep.error", error[:MAX_TAG_VALUE]))
        self.client.log_batch(self.parent_run_id, tags=tags)
        self.client.set_terminated(self.parent_run_id, status="FAILED" if failed else "FINISHED")
        return SweepSummary(self.parent_run_id, table, **summary)


def _local_packed_dir(path: str, filesystem: Any, tmp: Path, name: str = PACKED_DIR) -> Path | None:
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


# ---- the parent's result artifacts ---------------------------------------------------------------


def _field(spec: Mapping[str, str] | Any, key: str) -> Any:
    return spec.get(key) if isinstance(spec, Mapping) else getattr(spec, key, None)


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, NaN as null, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        value = value.tolist() if hasattr(value, "tolist") else value
        return [_jsonable(v) for v in value] if isinstance(value, list) else _jsonable(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _write_frame(df: pd.DataFrame, path: Path, csv: bool = True) -> list[Path]:
    """Parquet (and CSV) of ``df``; columns pyarrow cannot type (mixed values) become text.

    A sweep may mix types in one param (``quant.act_signed``: ``"auto"`` or ``true``).
    """
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    typed = df.copy()
    for column in typed.columns:
        if pd.api.types.is_object_dtype(typed[column]):
            try:
                pa.array(typed[column], from_pandas=True)
            except (TypeError, ValueError, pa.ArrowException):
                typed[column] = typed[column].map(_as_text)
    typed.to_parquet(path, index=False)
    written = [path]
    if csv:
        df.to_csv(path.with_suffix(".csv"), index=False)
        written.append(path.with_suffix(".csv"))
    return written


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    return encode_param(_jsonable(value))  # the text MLflow shows for the param


def _trial_summary(row: pd.Series) -> dict[str, Any]:
    keys = TABLE_KEYS
    params = {k: v for k, v in row.items() if k not in keys and "/" not in k and k != "step"}
    metrics = {k: v for k, v in row.items() if "/" in k or k == "step"}
    return _jsonable({**{k: row.get(k) for k in keys}, "params": params, "metrics": metrics})


def _best_trial(
    table: pd.DataFrame, objectives: Sequence[Objective], front: pd.DataFrame | None
) -> dict[str, Any] | None:
    """The best trial per objective (by final value); with several objectives, the front too."""
    best: dict[str, Any] = {"objectives": [list(o) for o in objectives], "best": {}}
    for name, mode in objectives:
        values = pd.to_numeric(table[name], errors="coerce") if name in table else None
        if values is None or values.isna().all():
            continue
        index = values.idxmin() if mode == "min" else values.idxmax()
        best["best"][name] = {"value": float(values[index]), **_trial_summary(table.loc[index])}
    if not best["best"]:
        return None
    if front is not None:
        best["pareto_front"] = [
            {
                "trial_id": r["trial_id"],
                "run_id": r.get("run_id"),
                "values": {name: r[name] for name, _ in objectives},
            }
            for _, r in front.iterrows()
        ]
    return _jsonable(best)


def write_sweep_artifacts(
    directory: Path,
    table: pd.DataFrame,
    ablations: Iterable[Mapping[str, str] | Any],
    objectives: Sequence[Objective],
    history: Callable[[str, str], Sequence[tuple[int, float]]] | None = None,
) -> dict[str, Any]:
    """Write the parent run's result files under ``directory`` (see :meth:`SweepTracker.finish`).

    Ablations take finished trials' values, or with ``at_step`` every trial's value at that step
    (read through ``history(run_id, metric)``; orchestrator.ablation_select). Returns the
    :class:`SweepSummary` fields other than the parent id and the trial table.
    """
    from .plots import ablation_heatmap, pareto_plot

    written = _write_frame(table, directory / "trials.parquet", csv=False)
    warnings: list[str] = []
    matrices: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    for spec in ablations:
        rows, cols, value = (_field(spec, k) for k in ("rows", "cols", "value"))
        name = str(_field(spec, "name") or f"{value}_by_{rows}").replace("/", "_")
        # finished trials only, or all at one step; failed trials keep their cell, not a value
        try:
            valued, label = select_values(
                table, value, at_step=_field(spec, "at_step"), history=history
            )
            long = ablation_table(valued, rows, cols, value)
        except ValueError as err:
            warnings.append(f"ablation {name!r} skipped: {err}")
            continue
        mean, std, count = matrices_from_table(long, rows, cols, value)
        matrices[name] = (mean, std)
        # one row per trial (what the matrix aggregates), then one row per cell (mean/std/count)
        per_trial = [c for c in ("trial_id", "run_id", "status", rows, cols, value) if c in table]
        written += _write_frame(valued[per_trial], directory / "ablation" / f"{name}.parquet")
        written += _write_frame(long, directory / "ablation" / f"{name}_cells.parquet")
        written.append(
            ablation_heatmap(
                mean,
                std,
                directory / "ablation" / f"{name}.png",
                title=f"{name}: {label}",
                value=value,
                count=count,
            )
        )
    # A failed trial's partial metrics are not a result: keep it out of the front and the best.
    usable = table[table["status"] != FAILED] if "status" in table else table
    front = None
    if len(objectives) >= 2:
        try:
            front = pareto_front(usable, objectives)
        except ValueError as err:
            warnings.append(f"Pareto front skipped: {err}")
        else:
            written += _write_frame(front, directory / "pareto" / "front.parquet")
            if len(objectives) <= 3:
                written.append(
                    pareto_plot(usable, objectives, directory / "pareto" / "front.png", front=front)
                )
    best = _best_trial(usable, objectives, front) if objectives else None
    if best is not None:
        (directory / "best_trial.json").write_text(json.dumps(best, indent=2, default=str))
        written.append(directory / "best_trial.json")
    artifacts = [p.relative_to(directory).as_posix() for p in written]
    return {
        "ablations": matrices,
        "pareto_front": front,
        "best_trial": best,
        "artifacts": artifacts,
        "warnings": warnings,
    }


def build_trial_table(
    source: SweepTracker | Iterable[Any], objectives: Sequence[Objective] = ()
) -> pd.DataFrame:
    """The trial table from a tracker (MLflow's child runs) or from Tune results (a ResultGrid).

    From Tune results there is no ``run_id`` and ``status`` is ``failed`` or ``finished``.
    """
    if isinstance(source, SweepTracker):
        return source.trial_table()
    rows = []
    for result in source:
        metrics = dict(result.metrics or {})
        row: dict[str, Any] = {
            "trial_id": metrics.get("trial_id") or Path(str(result.path)).name,
            "run_id": None,
            "status": FAILED if result.error else FINISHED,
            **trial_params(result.config or {}),
            **contract_metrics(metrics),
        }
        history = result.metrics_dataframe
        for name, mode in objectives:
            series = history[name] if history is not None and name in history else pd.Series([])
            row[f"best/{name}"] = series.min() if mode == "min" else series.max()
        rows.append(row)
    return pd.DataFrame(rows)


# ---- the Tune callback ---------------------------------------------------------------------------


def trial_error_reason(trial: Trial) -> tuple[str, str]:
    """(one-line reason, full text) of a failed Tune trial's error.

    Read from the driver's staging copies (``trial.pickled_error_file``, ``trial.error_file``):
    when ``on_trial_error`` runs they are not yet synced to the storage that ``get_error`` reads.
    """
    exc: BaseException | None = None
    full = ""
    try:
        if trial.pickled_error_file and os.path.exists(trial.pickled_error_file):
            from ray import cloudpickle  # Tune wrote it with Ray's cloudpickle

            with open(trial.pickled_error_file, "rb") as f:
                exc = cloudpickle.load(f)
        if trial.error_file and os.path.exists(trial.error_file):
            full = Path(trial.error_file).read_text(errors="replace")
    except Exception as err:  # an unpicklable error must not hide the failure itself
        log.debug("could not read the error of trial %s: %s", trial.trial_id, err)
    if exc is not None:
        cause = getattr(exc, "cause", None) or exc
        first = str(cause).strip().splitlines()
        reason = f"{type(cause).__name__}: {first[0] if first else ''}".rstrip(": ")
    else:
        lines = [line.strip() for line in full.splitlines() if line.strip()]
        reason = lines[-1] if lines else "unknown error"
    return reason, full or reason


class MLflowTuneCallback(Callback):
    """Drives a :class:`SweepTracker` from Tune's driver-side hooks (never from the workers).

    ``strict=False`` (the default) logs MLflow failures during the sweep as warnings instead of
    failing the sweep: an hours-long search should not die for a lost metric. Tests use strict.
    """

    def __init__(
        self,
        tracker: SweepTracker,
        *,
        strict: bool = False,
        params_fn: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.tracker = tracker
        self.strict = strict
        # A module-level function: Tune pickles its callbacks into tuner.pkl.
        self.params_fn = params_fn or trial_params

    def _guard(self, what: str, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as err:
            if self.strict:
                raise
            log.warning("MLflow logging failed (%s); the sweep goes on: %s", what, err)

    def setup(self, **info: Any) -> None:
        """Connect the tracker (a restored Tuner brings an unpickled, unconnected one)."""
        if not self.tracker.started:
            self.tracker.start()

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """Open the trial's child run with its params."""
        self._guard(
            "trial start",
            lambda: self.tracker.trial_started(trial.trial_id, self.params_fn(trial.config)),
        )

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        """Log the result's contract metrics at its step."""
        self._guard(
            "result",
            lambda: self.tracker.log_result(trial.trial_id, result, self.params_fn(trial.config)),
        )

    def on_checkpoint(
        self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Any, **info: Any
    ) -> None:
        """Remember a checkpoint Tune persisted (one-worker trials report them to Tune)."""
        self._guard(
            "checkpoint",
            lambda: self.tracker.set_checkpoint(
                trial.trial_id, checkpoint.path, checkpoint.filesystem
            ),
        )

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """End the child run as finished or stopped early, uploading the packed model."""
        if not self.tracker.knows(trial.trial_id) and not trial.last_result:
            return  # a pending trial removed at the end of the sweep never ran: no run for it
        self._guard("trial end", lambda: self.tracker.trial_finished(trial.trial_id))

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """End the child run as failed with the error's reason (the traceback as error.txt)."""
        reason, full = trial_error_reason(trial)
        self._guard("trial error", lambda: self.tracker.trial_failed(trial.trial_id, reason, full))
