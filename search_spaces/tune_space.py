"""From a sweep's ``search.space`` to a Ray Tune ``param_space``.

Every searched key is a dotted run-config key; the trial's config holds the flat run config under
``run_config``. A ``scenario`` entry (a mapping of labels to dotted overrides, searched as a grid
or a choice) lets one axis set several keys at once, like seed 002's five BR scenarios.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray import tune

RUN_CONFIG_KEY = "run_config"
SCENARIO_KEY = "scenario"


def domain(dist: Any) -> Any:
    """The Tune sampling domain of one :class:`orchestrator.spec.Distribution`."""
    if dist.dist == "uniform":
        return (
            tune.quniform(dist.low, dist.high, dist.step)
            if dist.step
            else tune.uniform(dist.low, dist.high)
        )
    if dist.dist == "loguniform":
        return tune.loguniform(dist.low, dist.high)
    if dist.dist == "int":
        # tune.randint's upper bound is exclusive; the spec's is inclusive
        return (
            tune.qrandint(int(dist.low), int(dist.high), int(dist.step))
            if dist.step
            else tune.randint(int(dist.low), int(dist.high) + 1)
        )
    values = scenario_labels(dist) if is_scenario(dist) else list(dist.values)
    return tune.grid_search(values) if dist.dist == "grid" else tune.choice(values)


def is_scenario(dist: Any) -> bool:
    """True when a choice/grid's values are labelled override bundles (``{label: {key: v}}``)."""
    return (
        isinstance(dist.values, list)
        and bool(dist.values)
        and all(isinstance(v, dict) and set(v) == {"label", "set"} for v in dist.values)
    )


def scenario_labels(dist: Any) -> list[str]:
    """The labels of a scenario axis."""
    return [str(v["label"]) for v in dist.values]


def scenario_overrides(dist: Any, label: str) -> dict[str, Any]:
    """The dotted overrides a scenario label stands for."""
    for value in dist.values:
        if str(value["label"]) == label:
            return dict(value["set"])
    raise KeyError(f"unknown scenario {label!r}")


def param_space(
    base_flat: dict[str, Any], space: dict[str, Any], layers: Sequence[str] = ()
) -> dict[str, Any]:
    """Tune's ``param_space``: the flat run config with searched keys replaced by domains.

    A ``per_layer`` distribution becomes ``{layer: choice(values)}``, one dimension per name in
    ``layers`` (the model's quantized layers, see ``orchestrator.mixed_precision``).
    """
    run_config: dict[str, Any] = dict(base_flat)
    extra: dict[str, Any] = {}
    for key, dist in space.items():
        if key == SCENARIO_KEY:
            extra[SCENARIO_KEY] = domain(dist)
        elif dist.dist == "per_layer":
            if not layers:
                raise ValueError(f"{key}: a per_layer distribution needs the model's layer names")
            run_config[key] = {name: tune.choice(list(dist.values)) for name in layers}
        else:
            run_config[key] = domain(dist)
    return {RUN_CONFIG_KEY: run_config, **extra}


def resolve_trial_config(config: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """The flat run config of one trial: its sampled values plus its scenario's overrides."""
    flat = dict(config[RUN_CONFIG_KEY])
    label = config.get(SCENARIO_KEY)
    if label is not None and SCENARIO_KEY in space:
        flat.update(scenario_overrides(space[SCENARIO_KEY], label))
    return flat
