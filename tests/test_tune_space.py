"""orchestrator.tune_space: a sweep's search space as Tune's param_space, scenarios included."""

from __future__ import annotations

import importlib.util
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given

from orchestrator.spec import Distribution, load_sweep
from orchestrator.trials import trial_params, trial_run_config
from orchestrator.tune_space import (
    SCENARIO_KEY,
    SCENARIOS_KEY,
    domain,
    is_scenario,
    param_space,
    scenario_labels,
)
from trainables.trial_settings import RUN_CONFIG_KEY


@given(low=st.integers(-50, 50), width=st.integers(1, 6))
def test_int_domains_include_the_spec_s_upper_bound(low: int, width: int) -> None:
    # the spec's int range is inclusive; tune.randint's upper bound is exclusive
    sampled = domain(Distribution(dist="int", low=low, high=low + width)).sample(size=200)
    assert set(int(v) for v in sampled) == set(range(low, low + width + 1))


@given(
    low=st.floats(1e-4, 1.0),
    factor=st.floats(1.5, 1e3),
    kind=st.sampled_from(["uniform", "loguniform"]),
)
def test_continuous_domains_stay_in_range(low: float, factor: float, kind: str) -> None:
    high = low * factor
    values = domain(Distribution(dist=kind, low=low, high=high)).sample(size=50)
    assert all(low <= v <= high for v in values)


def test_stepped_domains_land_on_the_grid() -> None:
    floats = domain(Distribution(dist="uniform", low=0.0, high=1.0, step=0.25)).sample(size=200)
    assert set(floats) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    ints = domain(Distribution(dist="int", low=0, high=12, step=4)).sample(size=200)
    assert set(ints) <= {0, 4, 8, 12}


def test_choice_and_grid() -> None:
    assert domain(Distribution(dist="choice", values=[2, 4])).categories == [2, 4]
    assert domain(Distribution(dist="grid", values=["a", "b"])) == {"grid_search": ["a", "b"]}


def test_an_empty_space_is_the_base_config() -> None:
    base = {"train.lr": 0.01, "quant.scheme": "ternary"}
    assert param_space({}) == {RUN_CONFIG_KEY: {}}
    assert trial_run_config({RUN_CONFIG_KEY: {}}, base) == base


def test_a_trial_config_holds_only_its_sampled_values() -> None:
    # the base is Tune's per-trial cost (config, its unresolved copy, tag, JSON) for the whole
    # sweep: it travels once with the trainable instead (issue 17)
    spec = load_sweep("demo")
    space = param_space(spec.search.space)
    assert set(space[RUN_CONFIG_KEY]) == set(spec.search.space)
    base = spec.run.to_flat()
    sampled = {key: f"sampled {key}" for key in spec.search.space}
    trial = {RUN_CONFIG_KEY: sampled}
    assert trial_run_config(trial, base) == {**base, **sampled}  # sampled values win
    assert trial_params(trial, base) == {**base, **sampled}
    # a trial saved before the split holds the whole run config: the same result
    assert trial_run_config({RUN_CONFIG_KEY: dict(base)}, base) == base


def test_scenarios_sample_labels_and_carry_their_overrides() -> None:
    spec = load_sweep("br-ablation")
    scenario = spec.search.space[SCENARIO_KEY]
    assert is_scenario(scenario)
    assert not is_scenario(spec.search.space["train.seed"])
    space = param_space(spec.search.space)
    labels = scenario_labels(scenario)
    assert space[SCENARIO_KEY] == {"grid_search": labels}
    assert set(space[SCENARIOS_KEY]) == set(labels)
    assert space[RUN_CONFIG_KEY]["train.seed"] == {"grid_search": [0, 1, 2]}
    # one resolved trial: its label's overrides win over the base config
    trial: dict[str, Any] = {
        RUN_CONFIG_KEY: {"train.seed": 1},
        SCENARIO_KEY: "no BR",
        SCENARIOS_KEY: space[SCENARIOS_KEY],
    }
    flat = trial_run_config(trial, spec.run.to_flat())
    assert flat["loss.freeze_alpha"] is False and flat["loss.lambda_br_act"] == 0.0
    assert flat["train.seed"] == 1
    assert trial_params(trial, spec.run.to_flat())[SCENARIO_KEY] == "no BR"
    a_only = trial_run_config({**trial, SCENARIO_KEY: "A-only"}, spec.run.to_flat())
    assert a_only["loss.lambda_br_act"] == 1.0


def test_search_spaces_holds_presets_only() -> None:
    assert importlib.util.find_spec("search_spaces.tune_space") is None
    import trainables.worker
    from orchestrator import study, trials

    # one run-config key, defined in trainables (workers need it; they never import orchestrator)
    assert trainables.worker.RUN_CONFIG_KEY is RUN_CONFIG_KEY
    assert study.PREFIX == RUN_CONFIG_KEY + "/"
    assert not hasattr(trials, "resolve_trial_config")


def test_the_mapping_imports_ray_only_when_it_builds_domains() -> None:
    # the spec (`bitsweep validate`) uses the scenario helpers: no module-level ray import
    import ast
    import inspect

    import orchestrator.tune_space as module

    tree = ast.parse(inspect.getsource(module))
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] == "ray"], names


def test_per_layer_needs_layer_names() -> None:
    spec = load_sweep("mixed-precision")
    with pytest.raises(ValueError, match="layer names"):
        param_space(spec.search.space)
    space = param_space(spec.search.space, ["a", "b"])
    assert set(space[RUN_CONFIG_KEY]["quant.layer_bits"]) == {"a", "b"}
