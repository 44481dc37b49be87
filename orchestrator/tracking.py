"""MLflow tracking of a sweep: one parent run per sweep, one child run per Tune trial.

Everything is written from the Tune driver process (DESIGN.md): :class:`SweepTracker` owns the
MLflow client and the runs; ``orchestrator.tune_callbacks.MLflowTuneCallback`` feeds it from
Tune's callback hooks. A restored sweep finds its parent run by the ``bitsweep.sweep`` tag and its
child runs by ``bitsweep.trial_id``, and skips steps it already logged, so nothing is duplicated.

The layout (tags, statuses, params, artifact paths, the trial table) is
:mod:`orchestrator.run_layout`, which ``orchestrator.results`` reads back; the URI checks are
:mod:`orchestrator.tracking_uri`, the parent's result files :mod:`orchestrator.sweep_artifacts`,
a trial's record, params and checkpoint files :mod:`orchestrator.trial_tracking`.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd

from trainables.growth_events import MARKER as GROWTH_MARKER
from trainables.run_tags import run_tags

from . import __version__
from . import run_layout as layout
from .analysis import Objective
from .naming import child_run_name, log_parent_summary, mark_trial_state, searched_keys
from .study import link_run
from .sweep_artifacts import SweepSummary, log_sweep_artifacts
from .telemetry_tracking import log_drift_events
from .tracking_uri import check_reachable, experiment_id, resolve_tracking_uri
from .trial_tracking import (
    TrialRun,
    last_logged_step,
    log_growth_events,
    log_params,
    params_view,
    release_artifact_repo,
    storage_filesystem,
    update_best,
    upload_checkpoint,
)

if TYPE_CHECKING:
    import pyarrow.fs
    from mlflow import MlflowClient
    from mlflow.entities import Run


def git_commit() -> str | None:
    """The commit of the bitsweep source tree (the parent's ``bitsweep.git_commit``), when it is
    a git checkout."""
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
        experiment: str = layout.DEFAULT_EXPERIMENT,
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
        self.sweep_id: str | None = self.extra_tags.get(layout.TAG_SWEEP_ID)
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self.resumed = False
        self._client: MlflowClient | None = None
        self._trials: dict[str, TrialRun] = {}
        self._existing: dict[str, Run] = {}  # child runs found in MLflow, not yet touched
        self._param_base: dict[str, Any] = {}  # the params trials share (params_view)

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
            kwargs["tags"] = {layout.TAG_SWEEP_ID: spec.sweep_id, **(kwargs.get("tags") or {})}
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
        self.experiment_id = experiment_id(client, self.experiment, self.tracking_uri)
        parent = self._find_parent()
        if parent is None:
            tags = {layout.TAG_ROLE: layout.ROLE_SWEEP, layout.TAG_SWEEP: self.sweep}
            tags.update(self.extra_tags)
            name = self.sweep_id or self.sweep
            parent = client.create_run(self.experiment_id, run_name=name, tags=tags)
            self.resumed = False
        else:
            self.resumed = True
            if parent.info.status != "RUNNING":
                client.update_run(parent.info.run_id, status="RUNNING")
        self.parent_run_id = parent.info.run_id
        self._log_parent_description()
        self._existing = {r.data.tags[layout.TAG_TRIAL_ID]: r for r in self._children()}
        return self.parent_run_id

    def _find_parent(self) -> Run | None:
        if self.parent_run_id is not None:  # an unpickled tracker knows its run
            run = self.client.get_run(self.parent_run_id)
            if run.info.lifecycle_stage == "active":
                return run
        if not self.reuse:
            return None
        tag, value = layout.TAG_SWEEP, self.sweep
        if self.sweep_id:
            tag, value = layout.TAG_SWEEP_ID, self.sweep_id
        return layout.newest_parent(self.client, self.experiment_id, tag, value)

    def _log_parent_description(self) -> None:
        from mlflow.entities import RunTag

        tags = layout.parent_tags(
            self.sweep, self.objectives, version=__version__, preset=self.preset,
            commit=git_commit(),
        )  # fmt: skip
        tags.update(self.extra_tags)
        limit = layout.MAX_TAG_VALUE
        entries = [RunTag(k[: layout.MAX_KEY], str(v)[:limit]) for k, v in tags.items()]
        self.client.log_batch(self.parent_run_id, tags=entries)
        if self.sweep_yaml is not None:
            self.client.log_text(self.parent_run_id, self.sweep_yaml, layout.SWEEP_YAML)
        if self.search_space is not None:
            self.client.log_dict(self.parent_run_id, self.search_space, layout.SEARCH_SPACE_JSON)

    def _children(self) -> list[Run]:
        """Every child run of the parent (all pages), ordered by trial id."""
        return layout.child_runs(self.client, self.experiment_id, self.parent_run_id)

    # ---- trials -------------------------------------------------------------------------------

    def knows(self, trial_id: str) -> bool:
        """Whether the trial has a child run (made or found by this tracker)."""
        return trial_id in self._trials or trial_id in self._existing

    def _trial(self, trial_id: str, params: Mapping[str, Any] | None = None) -> TrialRun:
        """The trial's child run: known, found in MLflow (resume) or created now."""
        if trial_id in self._trials:
            return self._trials[trial_id]
        self.start()
        params = dict(params or {})
        found = self._existing.pop(trial_id, None)
        if found is None:
            tags = {
                **layout.trial_tags(self.parent_run_id, self.sweep, trial_id),
                **run_tags(params),  # seed 003's stage / source / model tags (hf_causal_lm)
            }
            run_name = child_run_name(params, searched_keys(self.search_space), trial_id)
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
            record = TrialRun(trial_id, run.info.run_id, self._params_view(params))
            log_params(self.client, record.run_id, params, {})
        else:
            record = TrialRun(
                trial_id, found.info.run_id, self._params_view(params), full_history=False
            )
            record.last_step = last_logged_step(self.client, found)
            record.status = found.data.tags.get(layout.TAG_STATUS, layout.RUNNING)
            log_params(self.client, record.run_id, params, found.data.params)
        self._trials[trial_id] = record
        link_run(trial_id, record.run_id)  # the Optuna trial's mlflow_run_id (orchestrator.study)
        return record

    def _params_view(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """A trial's params over the ones the sweep's trials share (kept once)."""
        if not hasattr(self, "_param_base"):  # unpickled from a tuner.pkl of an older version
            self._param_base = {}
        return params_view(params, self._param_base)

    def _set_status(
        self, record: TrialRun, status: str, run_status: str, error: str | None = None
    ) -> None:
        record.status = status
        layout.write_status(self.client, record.run_id, status, run_status=run_status, error=error)

    def trial_started(
        self, trial_id: str, params: Mapping[str, Any], *, exploited_from: str | None = None
    ) -> str:
        """Open (or, for a restored trial, reopen) the trial's child run; returns its run id.

        ``exploited_from`` names the donor trial when PBT restarts this trial from the donor's
        checkpoint: the run is tagged with it and its next results are logged from the donor's
        step on, even at steps the run already holds (MLflow keeps both lineages' values).
        """
        known = trial_id in self._trials
        record = self._trial(trial_id, params)
        if params and known:  # restarted (a retry, a PBT exploit): its params may have changed
            record.params = self._params_view(params)
        record.stop_seen = False
        if exploited_from is not None:
            record.rewound = True
            self.client.set_tag(record.run_id, layout.TAG_EXPLOITED_FROM, exploited_from)
        if record.status == layout.FAILED:  # restarted after an error: the old reason is gone
            self.client.delete_tag(record.run_id, layout.TAG_ERROR)
        if record.status != layout.RUNNING or not record.full_history:
            self._set_status(record, layout.RUNNING, "RUNNING")
        return record.run_id

    def log_result(
        self, trial_id: str, result: Mapping[str, Any], params: Mapping[str, Any] | None = None
    ) -> int:
        """Log a reported result's contract metrics at ``step``; returns how many were logged.

        Steps at or below the highest one already in MLflow are skipped, so a trial restored from
        its own checkpoint does not log its replayed steps twice (after a PBT exploit the first
        result is logged whatever its step: a new lineage starts there). ``done=True`` in a result
        means Tune (a scheduler or stopper) ended the trial; a ``checkpoint_path`` is kept for the
        artifacts.
        """
        from mlflow.entities import Metric

        record = self._trial(trial_id, params)
        if result.get("done"):
            record.stop_seen = True
        if isinstance(result.get("checkpoint_path"), str):
            record.checkpoint = (result["checkpoint_path"], None)
        metrics = layout.contract_metrics(result)
        step = int(result["step"]) if "step" in result else int(result.get("training_iteration", 0))
        if not metrics or (step <= record.last_step and not record.rewound):
            return 0
        record.rewound = False
        now = int(time.time() * 1000)
        entries = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(entries), layout.METRICS_PER_BATCH):
            self.client.log_batch(record.run_id, metrics=entries[i : i + layout.METRICS_PER_BATCH])
        record.last_step = step
        update_best(record.best, metrics, self.objectives)
        if GROWTH_MARKER in metrics:  # the model grew at this step (seed 004)
            log_growth_events(self.client, record.run_id, step, metrics)
        # bit_lm: K, C or S drifted (seed 004); a halting drift ends the trial as stopped early
        if log_drift_events(self.client, record.run_id, step, metrics, record.params):
            record.stopped_early = True
        return len(entries)

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
            stopped_early = record.stopped_early or (record.stop_seen and record.short())
        self._upload_packed(record)
        status = layout.STOPPED_EARLY if stopped_early else layout.FINISHED
        self._set_status(record, status, "FINISHED")
        mark_trial_state(self.client, record.run_id, self._run_name(record), status,
                         record.last_step, record.params.get("train.steps"))  # fmt: skip
        release_artifact_repo(record.run_id)
        return status

    def trial_failed(self, trial_id: str, error: str, details: str | None = None) -> None:
        """End the trial's run as FAILED with ``bitsweep.error`` = ``error`` (one line).

        ``details`` (a traceback) is kept as the run's ``error.txt`` artifact.
        """
        record = self._trial(trial_id)
        reason = (error or "unknown error")[: layout.MAX_TAG_VALUE]
        if details:
            self.client.log_text(record.run_id, details, layout.ERROR_TXT)
        self._set_status(record, layout.FAILED, "FAILED", reason)
        mark_trial_state(self.client, record.run_id, self._run_name(record), layout.FAILED,
                         record.last_step, None, reason)  # fmt: skip
        release_artifact_repo(record.run_id)

    def _run_name(self, record: TrialRun) -> str:
        """The child run's name from its searched values (orchestrator.naming)."""
        return child_run_name(record.params, searched_keys(self.search_space), record.trial_id)

    def _upload_packed(self, record: TrialRun) -> None:
        """The packed model and data files of the trial's last checkpoint (sweep_artifacts)."""
        if record.checkpoint is None:
            return
        path, filesystem = record.checkpoint
        if filesystem is None and self.storage_filesystem is None:  # remembered once found
            self.storage_filesystem = storage_filesystem(path, self.storage_path)
        upload_checkpoint(self.client, record.run_id, path, filesystem or self.storage_filesystem)

    # ---- the end ------------------------------------------------------------------------------

    def trial_table(self) -> pd.DataFrame:
        """One row per child run: ``trial_id``, ``run_id``, ``status``, params, final metrics.

        Params keep the types they were given in this process (decoded from MLflow's strings for
        trials of an earlier one); ``best/<metric>`` holds each objective's best value over steps.
        """
        self.start()

        def params(run: Run) -> Mapping[str, Any] | None:
            record = self._trials.get(run.data.tags[layout.TAG_TRIAL_ID])
            return record.params if record is not None else None

        return layout.trial_table(self._children(), self.objectives, params=params, best=self._best)

    def _best(self, run: Run, name: str, mode: str) -> float:
        """The best value of ``name`` over the trial's history: what this process saw of a
        trial it ran from its start, else MLflow's whole metric history."""
        record = self._trials.get(run.data.tags[layout.TAG_TRIAL_ID])
        if record is not None and record.full_history:
            return record.best.get(name, math.nan)
        history = layout.metric_history(self.client, run.info.run_id, name)
        return layout.best_value([value for _, value in history], mode)

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

        The artifacts (the trial table, ablation tables and heatmaps, the Pareto front, the best
        trial) are :func:`orchestrator.sweep_artifacts.write_sweep_artifacts`'s; an ablation naming
        a missing column is skipped with a warning in the summary, not losing the other results.
        """
        table = self.trial_table() if trial_table is None else trial_table
        objectives = list(self.objectives if objectives is None else objectives)
        summary = log_sweep_artifacts(self.client, self.parent_run_id, table, ablations, objectives)
        log_parent_summary(self.client, self.parent_run_id, table, summary.get("best_trial"))
        status = layout.FAILED if failed else layout.FINISHED
        layout.write_status(self.client, self.parent_run_id, status, run_status=status.upper(),
                            error=error)  # fmt: skip
        return SweepSummary(self.parent_run_id, table, **summary)
