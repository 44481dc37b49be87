"""The ``search`` section of a sweep file: searched keys, objectives, sampler and scheduler.

Split from :mod:`orchestrator.spec` (which re-exports every name here) so that each stays small;
:class:`SearchSpec` checks what the search alone can check, and ``spec`` what needs the run config.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.tune_space import SCENARIO_KEY


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distribution(_Block):
    """One searched key: ``uniform``/``loguniform``/``int`` over [low, high], or ``choice``/``grid``
    over ``values``."""

    dist: Literal["uniform", "loguniform", "int", "choice", "grid", "per_layer"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> Distribution:
        if self.dist == "per_layer":
            if not self.values or not all(isinstance(v, int) and 2 <= v <= 8 for v in self.values):
                raise ValueError("'per_layer' needs 'values': the bit-widths to choose, in 2..8")
            if self.low is not None or self.high is not None:
                raise ValueError("'per_layer' takes 'values', not low/high")
            return self
        if self.dist in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"'{self.dist}' needs a non-empty 'values' list")
            if self.low is not None or self.high is not None:
                raise ValueError(f"'{self.dist}' takes 'values', not low/high")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"'{self.dist}' needs 'low' and 'high'")
        if self.values is not None:
            raise ValueError(f"'{self.dist}' takes low/high, not 'values'")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.dist == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        return self

    def bounds(self) -> list[Any]:
        """Values that stand for the whole range when validating against the run config."""
        if self.dist == "per_layer":
            return [{}]  # the layer names exist once the model is built (mixed_precision.py)
        if self.values is not None:
            return list(self.values)
        if self.dist == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


class ObjectiveSpec(_Block):
    """A metric to optimize and its direction."""

    metric: str
    mode: Literal["min", "max"]


SchedulerType = Literal["asha", "hyperband", "optuna-sh", "optuna-hyperband", "pbt", "none"]


class SchedulerSpec(_Block):
    """Early stopping and population-based training (see orchestrator/search_setup.py).

    ``asha`` / ``hyperband``: Tune's asynchronous successive halving (one bracket / several),
    judged on evaluations (``training_iteration``); with several objectives ``asha`` becomes
    the Pareto-rank MO-ASHA. ``optuna-sh`` / ``optuna-hyperband``: Optuna's own pruners decide from
    the values reported to the study (single objective, ``algorithm: optuna``). ``pbt``: Tune's
    population-based training over ``mutations`` (keys of ``search.space``), exploiting every
    ``perturbation_interval`` evaluations from the exact-resume checkpoints.
    """

    type: SchedulerType = "none"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)
    max_t: int | None = Field(None, ge=1)
    brackets: int = Field(3, ge=1, le=10)
    perturbation_interval: int = Field(2, ge=1)
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5)
    resample_probability: float = Field(0.25, ge=0.0, le=1.0)
    mutations: list[str] | None = None


class SamplerSpec(_Block):
    """Optuna's TPE settings (``algorithm: optuna``), defaulted for budgets of tens of trials.

    ``n_startup_trials`` None: a quarter of ``num_samples``, between 3 and 10.
    """

    multivariate: bool = True
    n_startup_trials: int | None = Field(None, ge=0)
    constant_liar: bool = True


class SearchSpec(_Block):
    """What to search and how."""

    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    space: dict[str, Distribution] = Field(default_factory=dict)
    num_samples: int = Field(4, ge=1, le=100_000)
    metric: str | None = None
    mode: Literal["min", "max"] | None = None
    objectives: list[ObjectiveSpec] | None = None
    scheduler: SchedulerSpec = SchedulerSpec()
    sampler: SamplerSpec = SamplerSpec()
    seed: int = Field(0, ge=0)
    # Stop conditions (Tune stoppers): a wall-clock budget for the whole sweep, and a value of
    # the first objective that ends the sweep once any trial reaches it (mode says which side).
    # Mixed precision: the most model/bits_total a proposal may use (an Optuna constraint)
    bits_budget: float | None = Field(None, gt=0)
    time_budget_s: float | None = Field(None, gt=0)
    stop_at: float | None = None

    @model_validator(mode="after")
    def _one_objective_form(self) -> SearchSpec:
        if self.objectives and (self.metric or self.mode):
            raise ValueError("give either metric/mode or a list of objectives, not both")
        if not self.objectives and not (self.metric and self.mode):
            raise ValueError("give metric and mode (e.g. val/loss, min) or a list of objectives")
        if self.algorithm == "optuna" and any(d.dist == "grid" for d in self.space.values()):
            raise ValueError("optuna does not search grids: use dist 'choice' or algorithm 'grid'")
        for problem in _scheduler_problems(self):
            raise ValueError(problem)
        for key, dist in self.space.items():
            if dist.dist == "per_layer" and key != "quant.layer_bits":
                raise ValueError(f"space.{key}: dist 'per_layer' applies to quant.layer_bits only")
            if dist.dist == "per_layer" and self.algorithm == "grid":
                raise ValueError(f"space.{key}: algorithm 'grid' cannot search 'per_layer'")
        if self.bits_budget is not None and self.algorithm != "optuna":
            raise ValueError("bits_budget is an Optuna constraint: set algorithm: optuna")
        return self

    @property
    def objective_list(self) -> list[ObjectiveSpec]:
        """The objectives, single-metric sweeps included (a list of one)."""
        if self.objectives:
            return list(self.objectives)
        return [ObjectiveSpec(metric=self.metric or "", mode=self.mode or "min")]


def _scheduler_problems(search: SearchSpec) -> Iterable[str]:
    kind = search.scheduler.type
    multi = bool(search.objectives) and len(search.objectives or []) > 1
    if kind.startswith("optuna-"):
        if search.algorithm != "optuna" or not search.space:
            yield (
                f"scheduler.type {kind!r} prunes through the Optuna study: set algorithm: optuna "
                "with at least one key in search.space"
            )
        if multi:
            yield (
                f"scheduler.type {kind!r} judges one objective (Optuna's pruners do not support "
                "several); use type 'asha' (Pareto-rank for several objectives)"
            )
    if kind == "pbt":
        if search.algorithm != "random":
            yield (
                "scheduler.type 'pbt' samples its first population at random (Tune refuses a "
                "search algorithm with PBT): set algorithm: random"
            )
        if multi:
            yield "scheduler.type 'pbt' exploits on one objective: give metric and mode"
        numeric = [k for k, d in search.space.items() if d.dist in ("uniform", "loguniform", "int")]
        keys = search.scheduler.mutations if search.scheduler.mutations is not None else numeric
        for key in keys:
            if key not in search.space:
                yield f"scheduler.mutations: {key!r} is not a key of search.space"
            elif key == SCENARIO_KEY or search.space[key].dist == "per_layer":
                yield f"scheduler.mutations: {key!r} (a scenario or per-layer key) cannot mutate"
        if not keys:
            yield "scheduler.type 'pbt' needs a uniform, loguniform or int key in search.space"
    elif search.scheduler.mutations is not None:
        yield "scheduler.mutations applies to scheduler.type 'pbt' only"
