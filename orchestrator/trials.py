"""What a Tune trial runs: the loop in the trial process, or a TorchTrainer for several workers.

Both are module-level functions so that Ray imports them by reference on any node where bitsweep
is installed (or shipped in the job's ``runtime_env``). A trial's config is read only by the
constant keys: the flat run config (``RUN_CONFIG_KEY``), the sampled scenario label and its table
(``orchestrator.tune_space``), and the typed :class:`TrialSettings` (``TRIAL_SETTINGS_KEY``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.tune_space import SCENARIO_KEY, SCENARIOS_KEY
from trainables.trial_settings import RUN_CONFIG_KEY, TrialSettings, trial_settings, worker_config


def trial_run_config(
    config: Mapping[str, Any], base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The flat run config of one trial: the sweep's ``base`` run config, the trial's sampled
    values over it, then its scenario's overrides.

    A trial of a sweep started before the base travelled apart holds the whole run config in
    its own config: over the base it gives the same result.
    """
    flat = {**(base or {}), **config[RUN_CONFIG_KEY]}
    label = config.get(SCENARIO_KEY)
    if label is not None:
        flat.update(config.get(SCENARIOS_KEY, {}).get(label, {}))
    return flat


def trial_params(
    config: Mapping[str, Any], base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What MLflow logs as the trial's params: the flat run config and the scenario label."""
    params = trial_run_config(config, base)
    if config.get(SCENARIO_KEY) is not None:
        params[SCENARIO_KEY] = config[SCENARIO_KEY]
    return params


def single_process_trial(
    config: dict[str, Any], base_run_config: Mapping[str, Any] | None = None
) -> None:
    """A one-worker trial: the training loop runs in this Tune trial process.

    ``base_run_config`` is the sweep's flat run config (``tune.with_parameters`` hands it over
    from Ray's object store); ``config`` holds the trial's sampled values.
    """
    from dataclasses import replace

    from trainables.worker import tune_function_trainable

    # whatever the sweep's resources say, this process is the only rank
    settings = replace(trial_settings(config), strategy="none", workers_per_trial=1)
    tune_function_trainable(worker_config(trial_run_config(config, base_run_config), settings))


def distributed_trial(
    config: dict[str, Any], base_run_config: Mapping[str, Any] | None = None
) -> None:
    """A multi-worker trial: this process launches a TorchTrainer and forwards its reports.

    ``config`` and ``base_run_config`` as for :func:`single_process_trial`.

    Train V2 pattern: ``TuneReportCallback`` relays rank 0's metrics (and checkpoint path) to Tune;
    the run is named after the trial, so refitting after a restore resumes it.
    """
    import ray.tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainables.worker import train_fn_per_worker

    settings: TrialSettings = trial_settings(config)
    context = ray.tune.get_context()
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config=worker_config(trial_run_config(config, base_run_config), settings),
        scaling_config=ScalingConfig(
            num_workers=settings.workers_per_trial,
            use_gpu=settings.gpus_per_worker > 0,
            resources_per_worker=settings.worker_resources,
        ),
        run_config=RunConfig(
            name=f"train-{context.get_trial_id()}",
            storage_path=settings.train_storage,
            failure_config=FailureConfig(max_failures=settings.max_failures),
            # the Train run holds a multi-worker trial's only checkpoints: the same pruning as
            # Tune's for one-process trials (Train always keeps the latest as well)
            checkpoint_config=CheckpointConfig(
                num_to_keep=settings.keep_checkpoints,
                checkpoint_score_attribute=settings.score_metric,
                checkpoint_score_order=settings.score_mode,
            ),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()
