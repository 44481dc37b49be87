"""Run a sweep on Ray Tune (Optuna, random or grid search; optional ASHA), tracked in MLflow.

With no address an embedded local Ray is started and shut down; with an address (or
``RAY_ADDRESS``, as inside a submitted job) the sweep runs on that cluster. The Optuna study lives
in an sqlite file beside the results, and Tune's experiment state in ``storage.path/<name>``, so
``resume`` continues an interrupted sweep without rerunning finished trials.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd

from orchestrator.ray_session import TRIAL_SLOT, connect_ray, quiet_libraries
from orchestrator.spec import SweepSpec
from orchestrator.sweep_folder import STUDY_FILE, TUNER_FILE, experiment_dir, save_spec
from orchestrator.trials import distributed_trial, single_process_trial
from orchestrator.tune_space import param_space
from trainables.trial_settings import RUN_CONFIG_KEY, TRIAL_SETTINGS_KEY, TrialSettings


class SweepFailedError(RuntimeError):
    """The sweep ran but could not produce results (every trial failed, Ray refused, ...)."""


class SweepInterruptedError(RuntimeError):
    """Tune stopped on a signal (Ctrl+C) before every trial ended; the sweep can be resumed."""

    def __init__(self, name: str, storage: str) -> None:
        self.name, self.storage = name, storage
        super().__init__(f"sweep {name!r} was interrupted")


def expected_trials(spec: SweepSpec) -> int:
    """How many trials the search creates: grid cells x num_samples (optuna: num_samples)."""
    cells = 1
    if spec.search.algorithm != "optuna":
        for dist in spec.search.space.values():
            if dist.dist == "grid":
                cells *= len(dist.values or [])
    return cells * spec.search.num_samples


def _interrupted(results: Any, spec: SweepSpec) -> bool:
    trials = results._experiment_analysis.trials
    unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
    # a stop condition (time budget, threshold) ends a sweep before every trial was created
    stops = spec.search.time_budget_s is not None or spec.search.stop_at is not None
    return bool(unfinished) or (len(trials) < expected_trials(spec) and not stops)


@dataclass
class SweepOutcome:
    """What a finished sweep leaves: its trial table, best trial or Pareto front, and where."""

    name: str
    tracking_uri: str
    parent_run_id: str | None
    experiment_path: str
    trials: pd.DataFrame
    best: dict[str, Any] | None
    pareto: pd.DataFrame | None
    sweep_id: str | None = None

    @property
    def failed(self) -> int:
        """How many trials failed."""
        if self.trials.empty or "status" not in self.trials:
            return 0
        return int((self.trials["status"] == "failed").sum())


def _concurrency(spec: SweepSpec) -> int:
    import ray

    if spec.resources.max_concurrent_trials:
        return spec.resources.max_concurrent_trials
    res = spec.resources
    cluster = ray.cluster_resources()
    per_trial_cpu = res.workers_per_trial * res.cpus_per_worker
    limit = int(cluster.get("CPU", 1) // per_trial_cpu)
    if res.gpus_per_worker:
        limit = min(
            limit, int(cluster.get("GPU", 0) // (res.workers_per_trial * res.gpus_per_worker))
        )
    return max(1, limit)


def _single_process(spec: SweepSpec) -> bool:
    """Whether each trial runs the loop in its own Tune trial process (no TorchTrainer)."""
    return spec.resources.workers_per_trial == 1 and spec.resources.strategy == "none"


def _reuse_actors(spec: SweepSpec) -> bool:
    """Whether Tune hands a finished trial's actor to the next trial.

    One-process trials: yes. The next trial then starts without a new process and without
    importing torch and the trainables again (seconds per trial on a small machine, measured in
    benchmarks/bench_orchestration.py); ``tune_function_trainable`` leaves no state behind.
    TorchTrainer trials: no. A trial a scheduler stops must take its Train run down with its actor.
    """
    return _single_process(spec)


def _trainable(spec: SweepSpec) -> Any:
    import ray
    from ray import tune

    res = spec.resources
    # the base run config goes into Ray's object store once; each trial's config holds only
    # what was sampled for it (orchestrator.tune_space)
    base = spec.run.to_flat()
    if _single_process(spec):
        resources = {"cpu": res.cpus_per_worker, "gpu": res.gpus_per_worker}
        trial = tune.with_parameters(single_process_trial, base_run_config=base)
        return tune.with_resources(trial, resources)
    # The trial only launches a TorchTrainer: it must not take a core from its own workers.
    driver = {"cpu": 0, TRIAL_SLOT: 1} if ray.cluster_resources().get(TRIAL_SLOT) else {"cpu": 0.01}
    trial = tune.with_parameters(distributed_trial, base_run_config=base)
    return tune.with_resources(trial, driver)


def _search_algorithm(spec: SweepSpec, layers: Any = None) -> Any:
    """Optuna's TPE through :class:`orchestrator.search.StudySearch`, or random / grid."""
    search = spec.search
    # Optuna needs at least one searched key; with none, every trial is the base config
    if search.algorithm != "optuna" or not search.space:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # Tune applies max_concurrent_trials only to Searchers; a generator takes its own limit.
        return BasicVariantGenerator(random_state=search.seed, max_concurrent=_concurrency(spec))
    from orchestrator import search_setup
    from orchestrator.mixed_precision import BudgetConstraint

    constraint = None
    if layers is not None and search.bits_budget is not None:
        constraint = BudgetConstraint(layers, search.bits_budget, RUN_CONFIG_KEY)
    study_dir = experiment_dir(spec) if "://" not in spec.storage_path else None
    return search_setup.optuna_searcher(spec, study_dir, spec.sweep_id or spec.name, constraint)


def _scheduler(spec: SweepSpec, searcher: Any) -> Any:
    """The early-stopping (or PBT) scheduler ``search.scheduler`` names."""
    from orchestrator import search_setup

    mutations = None
    if spec.search.scheduler.type == "pbt":
        mutations = search_setup.pbt_mutations(spec, RUN_CONFIG_KEY)
    return search_setup.scheduler(spec, searcher, mutations)


def _layers(spec: SweepSpec) -> Any:
    """The model's quantized layers when the space has a ``per_layer`` key (mixed precision)."""
    from orchestrator.mixed_precision import LayerBits, per_layer_keys

    return LayerBits(spec.run) if per_layer_keys(spec) else None


def _param_space(spec: SweepSpec, layers: Any = None) -> dict[str, Any]:
    res = spec.resources
    names = layers.names if layers is not None else ()
    space = param_space(spec.search.space, names)
    space[TRIAL_SETTINGS_KEY] = TrialSettings(
        workers_per_trial=res.workers_per_trial,
        strategy=res.strategy,
        cpus_per_worker=res.cpus_per_worker,
        gpus_per_worker=res.gpus_per_worker,
        train_storage=f"{experiment_dir(spec)}/train",
        max_failures=res.max_failures,
        **_kept_checkpoints(spec),
    )
    return space


def _kept_checkpoints(spec: SweepSpec) -> dict[str, Any]:
    """How many checkpoints a trial keeps (its latest, plus the best ``storage.keep_checkpoints``
    by the first objective); all of them under PBT, which clones a donor's latest later on."""
    keep = spec.storage.keep_checkpoints
    if keep is None or spec.search.scheduler.type == "pbt":
        return {}
    first = spec.search.objective_list[0]
    return {"keep_checkpoints": keep, "score_metric": first.metric, "score_mode": first.mode}


def _checkpoint_config(spec: SweepSpec) -> Any:
    """Keep each trial's latest checkpoint and its ``storage.keep_checkpoints`` best ones."""
    from ray import tune

    # PBT clones a donor's latest checkpoint some time after choosing it: pruning could delete
    # it first ("does not exist on storage anymore"), so a PBT sweep keeps them all
    kept = _kept_checkpoints(spec)
    if not kept:
        return tune.CheckpointConfig()
    # num_to_keep forces a state snapshot at each checkpoint; Tune would warn about it each time
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    return tune.CheckpointConfig(
        num_to_keep=kept["keep_checkpoints"],
        checkpoint_score_attribute=kept["score_metric"],
        checkpoint_score_order=kept["score_mode"],
    )


def _trial_name(trial: Any) -> str:
    """Short trial names: the id (the default embeds every sampled value in the path)."""
    return f"trial_{trial.trial_id}"


def _callbacks(spec: SweepSpec, tracker: Any, stream: IO[str] | None) -> list[Any]:
    from orchestrator.progress import ProgressView
    from orchestrator.tune_callbacks import EndedTrialTrimmer, MLflowTuneCallback, trial_params

    first = spec.search.objective_list[0]
    from orchestrator.digests import DigestRecorder

    params = functools.partial(trial_params, base=spec.run.to_flat())
    callbacks: list[Any] = [
        MLflowTuneCallback(tracker, params_fn=params),
        DigestRecorder(experiment_dir(spec)),
    ]
    from orchestrator.checkpoint_pruning import stopped_trial_pruner

    # after the MLflow callback: a stopped trial's model is uploaded before its checkpoints go
    pruner = stopped_trial_pruner(
        spec.search.scheduler.type, spec.run.train.steps, f"{experiment_dir(spec)}/train"
    )
    callbacks += [pruner] if pruner is not None else []
    if stream is not None:
        callbacks.append(
            ProgressView(first.metric, first.mode, spec.run.train.steps, stream=stream)
        )
    # last: the callbacks above read an ended trial's whole last result in the same hook
    callbacks.append(EndedTrialTrimmer(o.metric for o in spec.search.objective_list))
    return callbacks


@contextmanager
def _no_tune_trial_logs() -> Iterator[None]:
    """Leave out Tune's per-trial CSV, JSON and TensorBoard logs (MLflow is the sweep's log).

    Besides files in each trial folder, they cost the driver memory that grows with the trials
    (the JSON logger keeps every trial's config for the whole sweep, TensorBoard a writer thread
    per running trial), and at its end ``tuner.fit()`` reads every trial's file back into a
    DataFrame that nothing here reads. ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0`` in the
    environment brings them back. Set for the sweep only: a library caller's own Tune runs in
    the same process keep Tune's default.
    """
    key = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
    before = os.environ.get(key)
    os.environ.setdefault(key, "1")
    if os.environ[key] == "1":
        # without the files, that end of fit() warns, with --verbose, once per trial
        logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
        logger.addFilter(_no_missing_metrics_warning)  # added once: the same function
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)


def _no_missing_metrics_warning(record: logging.LogRecord) -> bool:
    """False for ExperimentAnalysis's warning that trials have no result files."""
    return not record.getMessage().startswith("Failed to fetch metrics for")


def sync_hint(spec: SweepSpec) -> str:
    """The command that replays a sweep's buffered MLflow writes."""
    return f"bitsweep sync {spec.sweep_id or spec.name} --storage {spec.storage.path}"


def run_sweep(
    spec: SweepSpec,
    *,
    address: str | None = None,
    resume: bool = False,
    verbose: bool = False,
    stream: IO[str] | None = sys.stderr,
) -> SweepOutcome:
    """Run (or resume) ``spec`` to the end and write its MLflow parent run's summary.

    Raises ``TrackingUnreachableError`` before any training when MLflow cannot be reached, and
    :class:`SweepFailedError` when no trial produced a result.
    """
    from ray import tune

    from orchestrator.identity import with_new_id
    from orchestrator.resources import check_resources
    from orchestrator.stopping import sweep_stopper
    from orchestrator.tracking import SweepTracker
    from orchestrator.tracking_uri import check_reachable

    quiet_libraries(verbose)
    if not resume and spec.sweep_id is None:
        spec = with_new_id(spec)  # each run is a new sweep (library callers included)
    from orchestrator.sync import absolute_tracking_uri

    uri = absolute_tracking_uri(spec.tracking.resolved_uri())
    check_reachable(uri)
    from orchestrator import cleanup, digests, exits, locking, write_buffer
    from orchestrator.preflight import check_restorable
    from orchestrator.reconcile import fail_study_orphans, has_tune_state

    lock = locking.acquire(experiment_dir(spec), spec.name)  # a second driver is refused here
    if resume:  # a broken or replaced state file is named before Ray starts
        try:
            check_restorable(experiment_dir(spec), STUDY_FILE)  # one line per broken file
            if has_tune_state(experiment_dir(spec)):
                digests.verify(experiment_dir(spec))  # before anything stored is unpickled
        except BaseException:
            lock.release()
            raise
    exits.quiet_trial_failures(verbose)
    cleanup.stop_orphans(experiment_dir(spec))  # Ray processes a killed driver left behind
    started = connect_ray(address, verbose=verbose)
    # after ray.init: Ray's core worker installs a C++ SIGTERM handler that aborts the driver
    restore_signals, tracker = exits.install_sigterm(), None
    if started:
        cleanup.record_ray_processes(experiment_dir(spec))
    try:
        check_resources(spec)
        # a fresh run of an existing name starts a new parent; resume reuses the old one
        tracker = SweepTracker.for_sweep(spec, uri, reuse=resume)
        tracker.buffer_dir = experiment_dir(spec)  # MLflow writes that fail wait there
        path = experiment_dir(spec)
        trainable = _trainable(spec)
        layers = _layers(spec)  # mixed precision: the per-layer dimensions' names
        if resume and not has_tune_state(path):
            # killed before Tune's first snapshot: nothing to restore, start it again in place
            fail_study_orphans(Path(path) / STUDY_FILE, spec.sweep_id or spec.name)
            resume = False
        if resume:
            tuner = tune.Tuner.restore(
                path,
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=True,
                param_space=_param_space(spec, layers),
            )
        else:
            save_spec(spec)
            search_alg = _search_algorithm(spec, layers)
            tuner = tune.Tuner(
                trainable,
                param_space=_param_space(spec, layers),
                tune_config=tune.TuneConfig(
                    search_alg=search_alg,
                    scheduler=_scheduler(spec, search_alg),
                    num_samples=spec.search.num_samples,
                    max_concurrent_trials=_concurrency(spec),
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
                    reuse_actors=_reuse_actors(spec),
                ),
                run_config=tune.RunConfig(
                    name=spec.sweep_id or spec.name,
                    storage_path=spec.storage_path,
                    callbacks=_callbacks(spec, tracker, stream),
                    stop=sweep_stopper(spec),
                    failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                    checkpoint_config=_checkpoint_config(spec),
                    verbose=0,
                ),
            )
        if not resume:
            digests.record(path, [TUNER_FILE])  # what resume may unpickle, signed
        with exits.tune_fit(), _no_tune_trial_logs():  # fit() builds Tune's callbacks
            results = tuner.fit()
        if _interrupted(results, spec):
            raise SweepInterruptedError(spec.name, spec.storage.path)
        write_buffer.settle(experiment_dir(spec), sync_hint(spec))  # no summary from a gap
        exits.close_abandoned(tracker)
        if spec.search.algorithm == "optuna" and "://" not in spec.storage_path:
            from orchestrator.search import prune_running

            # trials a stopper ended got no on_trial_complete: stopped early, as in MLflow
            prune_running(Path(path) / STUDY_FILE, spec.sweep_id or spec.name)
        return _summarize(spec, tracker, results, path)
    except BaseException as err:
        exits.close_on_error(tracker, err)  # no run stays RUNNING, whatever ended the driver
        exits.raise_if_full(err, experiment_dir(spec))
        raise
    finally:
        restore_signals()
        if started:
            import ray

            ray.shutdown()
            cleanup.forget_ray_processes(experiment_dir(spec))
        lock.release()


def _summarize(spec: SweepSpec, tracker: Any, results: Any, path: str) -> SweepOutcome:
    table = tracker.trial_table()
    objectives = [(o.metric, o.mode) for o in spec.search.objective_list]
    ablations = [a.model_dump() for a in spec.ablation]
    completed = table[table["status"] != "failed"] if not table.empty else table
    failed = completed.empty
    summary = tracker.finish(table, ablations, objectives, failed=failed)
    if failed:
        errors = "; ".join(str(e) for e in table.get("error", pd.Series(dtype=str)).dropna()[:3])
        raise SweepFailedError(f"every trial of sweep {spec.name!r} failed: {errors}")
    return SweepOutcome(
        name=spec.name,
        tracking_uri=tracker.uri,
        parent_run_id=tracker.parent_run_id,
        experiment_path=path,
        trials=table,
        best=summary.get("best"),
        pareto=summary.get("pareto"),
        sweep_id=spec.sweep_id,
    )
