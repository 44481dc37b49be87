"""What a Tune trial resolves before it trains (orchestrator/trials.py): the flat run config from
the sampled values and the scenario's overrides, and the params MLflow logs for it.

Every scenario of every shipped preset (from the preset registry) resolves to a valid run config
that carries its overrides. Running trials for real (one process and TorchTrainer): the slow
sweeps in tests/test_sweeps.py and tests/test_worker.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from orchestrator.spec import load_sweep
from orchestrator.trials import trial_params, trial_run_config
from orchestrator.tune_space import SCENARIO_KEY, SCENARIOS_KEY, scenario_table
from search_spaces import load_preset_text, preset_names
from trainables.config import RunConfig
from trainables.trial_settings import RUN_CONFIG_KEY

TABLE = {"short": {"train.steps": 4, "loss.lambda_br": 0.0}, "long": {"train.steps": 40}}


def _trial(label: str | None, **sampled: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        RUN_CONFIG_KEY: {"train.steps": 20, "train.lr": 0.01, **sampled},
        SCENARIOS_KEY: TABLE,
    }
    if label is not None:
        config[SCENARIO_KEY] = label
    return config


def test_the_scenario_overrides_win_over_sampled_and_base_values() -> None:
    config = _trial("short", **{"loss.lambda_br": 1.0})
    assert trial_run_config(config) == {"train.steps": 4, "train.lr": 0.01, "loss.lambda_br": 0.0}
    assert trial_run_config(_trial("long")) == {"train.steps": 40, "train.lr": 0.01}


def test_without_a_scenario_the_run_config_is_the_sampled_one() -> None:
    config = _trial(None, **{"train.lr": 0.5})
    assert trial_run_config(config) == {"train.steps": 20, "train.lr": 0.5}
    assert SCENARIO_KEY not in trial_params(config)
    # a space without a scenario axis has no table either
    assert trial_run_config({RUN_CONFIG_KEY: {"train.steps": 3}}) == {"train.steps": 3}


def test_resolving_leaves_the_trial_s_config_untouched() -> None:
    """Tune keeps the config it handed out (and PBT copies it): resolving must not write to it."""
    config = _trial("short")
    before = {RUN_CONFIG_KEY: dict(config[RUN_CONFIG_KEY]), SCENARIOS_KEY: dict(TABLE)}
    flat = trial_run_config(config)
    flat["train.steps"] = 999
    assert config[RUN_CONFIG_KEY] == before[RUN_CONFIG_KEY]
    assert config[SCENARIOS_KEY] == before[SCENARIOS_KEY] and TABLE["short"]["train.steps"] == 4


def test_params_are_the_resolved_config_and_the_scenario_label() -> None:
    params = trial_params(_trial("short"))
    assert params == {
        "train.steps": 4,
        "train.lr": 0.01,
        "loss.lambda_br": 0.0,
        SCENARIO_KEY: "short",
    }


def _as_validated(resolved: Any, value: Any) -> Any:
    """``value`` in the form the config validates it to (a comma-separated list: a list)."""
    if isinstance(resolved, list | tuple) and isinstance(value, str):
        return type(resolved)(part.strip() for part in value.split(","))
    return value


def _presets_with_scenarios() -> list[str]:
    """Shipped presets whose search space has a scenario axis (read from the registry)."""
    names = []
    for name in preset_names():
        space = (yaml.safe_load(load_preset_text(name)).get("search") or {}).get("space") or {}
        if SCENARIO_KEY in space:
            names.append(name)
    return names


def test_some_shipped_presets_have_scenarios() -> None:
    assert _presets_with_scenarios()  # else the test below would check nothing


@pytest.mark.parametrize("preset", _presets_with_scenarios())
def test_every_preset_scenario_resolves_to_a_valid_run_config(preset: str) -> None:
    spec = load_sweep(preset, notify=None)
    table = scenario_table(spec.search.space[SCENARIO_KEY])
    assert table
    for label, overrides in table.items():
        config = {RUN_CONFIG_KEY: spec.run.to_flat(), SCENARIO_KEY: label, SCENARIOS_KEY: table}
        flat = trial_run_config(config)
        cfg = RunConfig.from_flat(flat, retarget_quant=True)  # what the trial trains
        resolved = cfg.to_flat()
        for key, value in overrides.items():
            assert _as_validated(resolved[key], value) == resolved[key], (preset, label, key)
        assert trial_params(config)[SCENARIO_KEY] == label
