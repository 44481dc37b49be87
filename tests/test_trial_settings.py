"""trainables.trial_settings: the typed settings a trial carries beside its run config."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from orchestrator import runner
from orchestrator.spec import load_sweep
from trainables.trial_settings import (
    RUN_CONFIG_KEY,
    TRIAL_SETTINGS_KEY,
    TrialSettings,
    trial_settings,
    worker_config,
)

FIXED = ["search.space={}", "search.algorithm=random"]


def test_the_param_space_carries_the_sweep_s_resources_as_one_typed_object() -> None:
    spec = load_sweep(
        "demo",
        [*FIXED, "resources.workers_per_trial=2", "resources.strategy=ddp",
         "resources.cpus_per_worker=0.5", "resources.max_failures=3"],
        notify=None,
    )  # fmt: skip
    space = runner._param_space(spec)
    assert set(space) == {RUN_CONFIG_KEY, TRIAL_SETTINGS_KEY}
    settings = space[TRIAL_SETTINGS_KEY]
    assert settings == TrialSettings(
        workers_per_trial=2,
        strategy="ddp",
        cpus_per_worker=0.5,
        gpus_per_worker=0.0,
        train_storage=f"{runner.experiment_dir(spec)}/train",
        max_failures=3,
        keep_checkpoints=1,  # storage.keep_checkpoints' default, ranked by the objective
        score_metric="val/bpb",
        score_mode="min",
    )
    assert settings.worker_resources == {"CPU": 0.5}
    # Tune pickles trial configs into its experiment state and ships them to workers
    assert pickle.loads(pickle.dumps(settings)) == settings


def test_settings_are_frozen_and_checked() -> None:
    settings = TrialSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_failures = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="strategy 'ddp' or 'fsdp'"):
        TrialSettings(workers_per_trial=2)
    with pytest.raises(ValueError, match="strategy must be one of"):
        TrialSettings(strategy="horovod")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrialSettings(checkpoint_every=0)
    assert TrialSettings(gpus_per_worker=1).worker_resources == {"CPU": 1.0, "GPU": 1.0}


def test_a_sweep_saved_with_untyped_settings_still_reads() -> None:
    # trial configs Tune restores from a sweep started before settings were typed
    legacy = {"workers_per_trial": 2, "strategy": "fsdp", "cpus_per_worker": 1,
              "gpus_per_worker": 0, "train_storage": "/x/train", "checkpoint_every": None,
              "max_failures": 1}  # fmt: skip
    settings = trial_settings({TRIAL_SETTINGS_KEY: legacy})
    assert settings.strategy == "fsdp" and settings.max_failures == 1
    assert trial_settings({}) == TrialSettings()


def test_worker_config_uses_the_constant_keys() -> None:
    settings = TrialSettings(checkpoint_every=5)
    config = worker_config({"train.steps": 10}, settings)
    assert config == {RUN_CONFIG_KEY: {"train.steps": 10}, TRIAL_SETTINGS_KEY: settings}
    assert trial_settings(config) is settings
