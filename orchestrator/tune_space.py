"""From a sweep's ``search.space`` to a Ray Tune ``param_space``.

Every searched key is a dotted run-config key; a trial's config holds its sampled values under
:data:`~trainables.trial_settings.RUN_CONFIG_KEY`, and only those: the sweep's base run config is
the same for every trial, so it travels once with the trainable (``tune.with_parameters``, see
``orchestrator.trials``) instead of in each trial's config. Tune keeps every trial's config,
its unresolved copy, a tag made from it and their JSON for the whole sweep: with the base config
in each (about 100 keys) that was about 18 of the 58 KiB of Python heap the driver kept per trial
(issue 17; ``benchmarks/probe_driver_heap.py``).

A ``scenario`` entry (a grid or choice over ``{label, set}`` bundles of dotted overrides) lets
one axis set several keys at once, like seed 002's five BR scenarios: Tune samples the label
(:data:`SCENARIO_KEY`) and the trial applies the label's overrides from the table under
:data:`SCENARIOS_KEY` (``orchestrator.trials``).

Ray is imported only when a domain is built, so the spec (``bitsweep validate``) can use the
scenario helpers without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from trainables.trial_settings import RUN_CONFIG_KEY

SCENARIO_KEY = "scenario"  # the searched label, and the MLflow param of it
SCENARIOS_KEY = "scenarios"  # label -> its dotted overrides, constant across trials


class SearchDistribution(Protocol):
    """What this module reads of :class:`orchestrator.spec.Distribution`."""

    dist: str
    low: float | None
    high: float | None
    step: float | None
    values: list[Any] | None


def domain(dist: SearchDistribution) -> Any:
    """The Tune sampling domain of one distribution (a scenario axis samples its labels)."""
    from ray import tune

    low, high = float(dist.low or 0.0), float(dist.high or 0.0)
    if dist.dist == "uniform":
        return tune.quniform(low, high, dist.step) if dist.step else tune.uniform(low, high)
    if dist.dist == "loguniform":
        return tune.loguniform(low, high)
    if dist.dist == "int":
        # tune.randint's upper bound is exclusive; the spec's is inclusive
        if dist.step:
            return tune.qrandint(int(low), int(high), int(dist.step))
        return tune.randint(int(low), int(high) + 1)
    values = scenario_labels(dist) if is_scenario(dist) else list(dist.values or [])
    return tune.grid_search(values) if dist.dist == "grid" else tune.choice(values)


def is_scenario(dist: SearchDistribution) -> bool:
    """True when a choice/grid's values are labelled override bundles (``{label, set}``)."""
    return (
        isinstance(dist.values, list)
        and bool(dist.values)
        and all(isinstance(v, dict) and set(v) == {"label", "set"} for v in dist.values)
    )


def scenario_labels(dist: SearchDistribution) -> list[str]:
    """The labels of a scenario axis, in order."""
    return [str(v["label"]) for v in dist.values or []]


def scenario_table(dist: SearchDistribution) -> dict[str, dict[str, Any]]:
    """Label -> the dotted overrides it stands for (what a trial applies for its label)."""
    return {str(v["label"]): dict(v["set"]) for v in dist.values or []}


def param_space(
    space: Mapping[str, SearchDistribution], layers: Sequence[str] = ()
) -> dict[str, Any]:
    """Tune's ``param_space``: the searched keys' domains (a trial applies them over the base).

    A ``per_layer`` distribution becomes ``{layer: choice(values)}``, one dimension per name in
    ``layers`` (the model's quantized layers, see ``orchestrator.mixed_precision``). A scenario
    axis adds the sampled label and the constant label table. An empty space samples nothing:
    every trial runs the base config.
    """
    from ray import tune

    run_config: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, dist in space.items():
        if key == SCENARIO_KEY:
            extra[SCENARIO_KEY] = domain(dist)
            if is_scenario(dist):
                extra[SCENARIOS_KEY] = scenario_table(dist)
        elif dist.dist == "per_layer":
            if not layers:
                raise ValueError(f"{key}: a per_layer distribution needs the model's layer names")
            run_config[key] = {name: tune.choice(list(dist.values or [])) for name in layers}
        else:
            run_config[key] = domain(dist)
    return {RUN_CONFIG_KEY: run_config, **extra}
