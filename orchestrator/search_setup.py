"""From a sweep's ``search`` block to Tune's search algorithm and scheduler.

Which scheduler when (``search.scheduler.type``):

- ``none``: every trial runs ``train.steps``.
- ``asha``: Tune's asynchronous successive halving on the first objective; with several
  objectives the Pareto-rank MO-ASHA (:class:`orchestrator.schedulers.ParetoASHA`).
- ``hyperband``: asynchronous Hyperband (ASHA over ``brackets`` brackets of different grace
  periods), safer than ``asha`` when early evaluations mislead.
- ``optuna-sh`` / ``optuna-hyperband``: Optuna's pruners on the study TPE samples from, counting
  training steps (single objective).
- ``pbt``: population-based training: the bottom ``quantile_fraction`` of trials clone a top
  trial's checkpoint every ``perturbation_interval`` evaluations and continue with perturbed or
  resampled values of the ``mutations`` keys (schedule-like keys: lambda warm-up, BR weights,
  bit-loss weight, growth thresholds, learning rate).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.sweep_folder import STUDY_FILE

if TYPE_CHECKING:
    from orchestrator.spec import SearchSpec, SweepSpec


def evaluations(spec: SweepSpec) -> int:
    """How many evaluations (Tune iterations) a full-length trial reports."""
    return max(1, -(-spec.run.train.steps // spec.run.train.eval_every))


def startup_trials(search: SearchSpec) -> int:
    """TPE's random start-up trials: the setting, else a quarter of the budget in [3, 10]."""
    if search.sampler.n_startup_trials is not None:
        return search.sampler.n_startup_trials
    return max(3, min(10, search.num_samples // 4))


def optuna_searcher(
    spec: SweepSpec, study_dir: str | None, study_name: str, constraint: Any = None
) -> Any:
    """The :class:`orchestrator.search.StudySearch` of an ``algorithm: optuna`` sweep.

    ``study_dir``: where the sqlite study lives (None: in memory, for remote storage).
    ``constraint``: a proposed config -> constraint values (mixed precision's bits budget).
    """
    import optuna

    from orchestrator.mixed_precision import CONSTRAINT_NAME
    from orchestrator.search import StudySearch, make_pruner, make_sampler

    search = spec.search
    objectives = search.objective_list
    storage = None
    if study_dir is not None:
        Path(study_dir).mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.RDBStorage(f"sqlite:///{Path(study_dir) / STUDY_FILE}")
    multi = len(objectives) > 1
    pruner = None
    kind = search.scheduler.type
    if kind.startswith("optuna-"):
        total = spec.run.train.steps
        pruner = make_pruner(
            kind,
            min_resource=min(total, search.scheduler.grace_period * spec.run.train.eval_every),
            max_resource=total,
            reduction_factor=search.scheduler.reduction_factor,
        )
    return StudySearch(
        total_steps=spec.run.train.steps,
        pruner=pruner,
        constraint=constraint,
        constraint_name=CONSTRAINT_NAME,
        metric=[o.metric for o in objectives] if multi else objectives[0].metric,
        mode=[o.mode for o in objectives] if multi else objectives[0].mode,
        sampler=make_sampler(
            seed=search.seed,
            multivariate=search.sampler.multivariate,
            n_startup_trials=startup_trials(search),
            constant_liar=search.sampler.constant_liar,
        ),
        study_name=study_name,
        storage=storage,
    )


def scheduler(spec: SweepSpec, searcher: Any, mutations: dict[str, Any] | None = None) -> Any:
    """Tune's trial scheduler for ``search.scheduler`` (None for ``none``).

    ``searcher``: the sweep's search algorithm (the Optuna pruners report through it).
    ``mutations``: for ``pbt``, the nested Tune domains of the mutated keys.
    """
    sched = spec.search.scheduler
    objectives = spec.search.objective_list
    first = objectives[0]
    total = evaluations(spec)
    max_t = sched.max_t or total
    grace = min(sched.grace_period, total)
    if sched.type == "none":
        return None
    if sched.type == "asha" and len(objectives) > 1:
        from orchestrator.schedulers import ParetoASHA

        return ParetoASHA(
            [o.metric for o in objectives],
            [o.mode for o in objectives],
            max_t=max_t,
            grace_period=grace,
            reduction_factor=sched.reduction_factor,
        )
    if sched.type in ("asha", "hyperband"):
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            time_attr="training_iteration",
            metric=first.metric,
            mode=first.mode,
            max_t=max_t,
            grace_period=grace,
            reduction_factor=sched.reduction_factor,
            brackets=sched.brackets if sched.type == "hyperband" else 1,
        )
    if sched.type.startswith("optuna-"):
        from orchestrator.schedulers import OptunaPrunerScheduler

        return OptunaPrunerScheduler(searcher, first.metric)
    if sched.type == "pbt":
        from orchestrator.schedulers import FinalStepAwarePBT

        return FinalStepAwarePBT(
            total_steps=spec.run.train.steps,
            time_attr="training_iteration",
            metric=first.metric,
            mode=first.mode,
            perturbation_interval=sched.perturbation_interval,
            hyperparam_mutations=mutations or {},
            quantile_fraction=sched.quantile_fraction,
            resample_probability=sched.resample_probability,
        )
    raise ValueError(f"unknown search.scheduler.type {sched.type!r}")


def pbt_mutations(spec: SweepSpec, run_config_key: str) -> dict[str, Any]:
    """The nested ``{run_config_key: {dotted key: Tune domain or value list}}`` PBT perturbs.

    Continuous keys are multiplied by 0.8 or 1.2 (or resampled); a choice or grid key, as a
    list, moves to a neighbouring value (Tune's PBT rules).
    """
    from orchestrator.tune_space import domain

    search = spec.search
    numeric = [k for k, d in search.space.items() if d.dist in ("uniform", "loguniform", "int")]
    keys = search.scheduler.mutations if search.scheduler.mutations is not None else numeric
    mutations: dict[str, Any] = {}
    for key in keys:
        dist = search.space[key]
        mutations[key] = list(dist.values) if dist.values is not None else domain(dist)
    return {run_config_key: mutations}
