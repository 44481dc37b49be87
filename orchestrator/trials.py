"""What a Tune trial runs: the loop in the trial process, or a TorchTrainer for several workers.

Both are module-level functions so that Ray imports them by reference on any node where bitsweep
is installed (or shipped in the job's ``runtime_env``).
"""

from __future__ import annotations

from typing import Any

from search_spaces.tune_space import RUN_CONFIG_KEY, SCENARIO_KEY

# Keys of a trial's config besides the run config (constant across trials).
SCENARIOS_KEY = "scenarios"
TRIAL_SETTINGS_KEY = "bitsweep"


def trial_run_config(config: dict[str, Any]) -> dict[str, Any]:
    """The flat run config of one trial: sampled values plus its scenario's overrides."""
    flat = dict(config[RUN_CONFIG_KEY])
    label = config.get(SCENARIO_KEY)
    if label is not None:
        flat.update(config.get(SCENARIOS_KEY, {}).get(label, {}))
    return flat


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """What MLflow logs as the trial's params: the flat run config and the scenario label."""
    params = trial_run_config(config)
    if config.get(SCENARIO_KEY) is not None:
        params[SCENARIO_KEY] = config[SCENARIO_KEY]
    return params


def single_process_trial(config: dict[str, Any]) -> None:
    """A one-worker trial: the training loop runs in this Tune trial process."""
    from trainables.worker import RUN_CONFIG_KEY as WORKER_RUN_CONFIG
    from trainables.worker import tune_function_trainable

    settings = config.get(TRIAL_SETTINGS_KEY, {})
    tune_function_trainable(
        {
            WORKER_RUN_CONFIG: trial_run_config(config),
            "strategy": "none",
            "checkpoint_every": settings.get("checkpoint_every"),
        }
    )


def distributed_trial(config: dict[str, Any]) -> None:
    """A multi-worker trial: this process launches a TorchTrainer and forwards its reports.

    Train V2 pattern: ``TuneReportCallback`` relays rank 0's metrics (and checkpoint path) to Tune;
    the run is named after the trial, so refitting after a restore resumes it.
    """
    import ray.tune
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainables.worker import RUN_CONFIG_KEY as WORKER_RUN_CONFIG
    from trainables.worker import train_fn_per_worker

    settings = config[TRIAL_SETTINGS_KEY]
    context = ray.tune.get_context()
    gpus = float(settings["gpus_per_worker"])
    resources = {"CPU": float(settings["cpus_per_worker"])}
    if gpus:
        resources["GPU"] = gpus
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={
            WORKER_RUN_CONFIG: trial_run_config(config),
            "strategy": settings["strategy"],
            "checkpoint_every": settings.get("checkpoint_every"),
        },
        scaling_config=ScalingConfig(
            num_workers=int(settings["workers_per_trial"]),
            use_gpu=gpus > 0,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=f"train-{context.get_trial_id()}",
            storage_path=settings["train_storage"],
            failure_config=FailureConfig(max_failures=int(settings.get("max_failures", 1))),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()
