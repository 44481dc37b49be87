"""Per-layer mixed precision as a search space (issue 15): one searched dimension per layer.

A ``per_layer`` distribution on ``quant.layer_bits`` (``{dist: per_layer, values: [2, 4, 8]}``)
expands, on the driver, into one categorical dimension per layer the ``lsq`` scheme quantizes,
named after the layer (``quant.layer_bits/layers.0``). With ``search.bits_budget`` each proposal's
``model/bits_total`` (exactly what the trial will report: the model is built with those bits and
measured) minus the budget is set on the Optuna trial as a constraint (``Trial.set_constraint``),
so TPE learns to propose feasible assignments (Optuna's constrained TPE).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.spec import SweepSpec
    from trainables.config import RunConfig

LAYER_BITS_KEY = "quant.layer_bits"
CONSTRAINT_NAME = "bits_over_budget"


def per_layer_keys(spec: SweepSpec) -> list[str]:
    """The searched keys whose distribution is ``per_layer``."""
    return [key for key, dist in spec.search.space.items() if dist.dist == "per_layer"]


class LayerBits:
    """The quantized layers of a sweep's model and the size a bits assignment gives it.

    Builds the float model once (on the driver; a few milliseconds for the models here).
    """

    def __init__(self, run: RunConfig) -> None:
        from trainables.build import build_float_model, initial_architecture, load_task_data

        self.run = run
        self._float = build_float_model(initial_architecture(run, load_task_data(run)))
        self.names = self._quantized_names()

    def _quantized_names(self) -> list[str]:
        from trainables.build import quantize
        from trainables.quant import QuantLayer

        model = quantize(copy.deepcopy(self._float), self.run.with_overrides({LAYER_BITS_KEY: {}}))
        return [name for name, m in model.named_modules() if isinstance(m, QuantLayer)]

    def bits_total(self, layer_bits: Mapping[str, int]) -> float:
        """``model/bits_total`` of the model with ``layer_bits`` (as the trial reports it)."""
        from trainables.build import quantize
        from trainables.metrics import model_size

        cfg = self.run.with_overrides({LAYER_BITS_KEY: dict(layer_bits)})
        return model_size(quantize(copy.deepcopy(self._float), cfg))["model/bits_total"]


def layer_bits_of(config: Mapping[str, Any], run_config_key: str) -> dict[str, int] | None:
    """The ``quant.layer_bits`` mapping in a trial config Tune or Optuna proposed, if any."""
    value = config.get(run_config_key, {}).get(LAYER_BITS_KEY)
    return dict(value) if isinstance(value, Mapping) else None


class BudgetConstraint:
    """``config -> bits_total - budget`` (feasible when <= 0), for the Optuna study.

    A class, not a closure: the searcher holding it is pickled into Tune's experiment state.
    """

    def __init__(self, layers: LayerBits, budget: float, run_config_key: str) -> None:
        self.layers, self.budget, self.run_config_key = layers, float(budget), run_config_key

    def __call__(self, config: Mapping[str, Any]) -> float | None:
        """The constraint of a proposed trial config (None when it has no layer bits)."""
        bits = layer_bits_of(config, self.run_config_key)
        if bits is None:
            return None
        return self.layers.bits_total(bits) - self.budget
