"""The driver's Ray: connect to a cluster (an address or ``RAY_ADDRESS``) or start an embedded local
one, with Ray's, Optuna's and MLflow's own logs kept quiet unless ``--verbose``."""

from __future__ import annotations

import os
from typing import Any

TRIAL_SLOT = "trial_slot"
# Set (unless already set) before a local Ray starts, so the raylet and every worker inherit them.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    # A TorchTrainer's controller polls its workers this often (Ray's default: 2 s); every Train run
    # waited up to one interval to notice its workers had finished. 0.5 s took about 3 s off each
    # TorchTrainer trial here (benchmarks/bench_orchestration.py) and costs nothing measurable.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def quiet_libraries(verbose: bool) -> None:
    """Ray, Optuna and MLflow keep their own logs to themselves unless ``--verbose``."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if not verbose:
        import logging

        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # the CLI names each failed trial in one line and the sweep's failure in another
        logging.getLogger("ray.tune.tune").addFilter(
            lambda record: not record.getMessage().startswith("Trials did not complete")
        )


def connect_ray(address: str | None, *, verbose: bool) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``) or start an embedded local Ray.

    Returns True when this call started Ray (and so must shut it down).
    """
    import ray

    quiet_libraries(verbose)
    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS")
    options: dict[str, Any] = {
        "log_to_driver": verbose,
        "logging_level": "INFO" if verbose else "ERROR",
    }
    if target:
        ray.init(address=target, **options)
        return True
    from orchestrator.cleanup import start_local_ray

    start_local_ray(
        num_cpus=os.cpu_count() or 1,
        resources={TRIAL_SLOT: 1024},
        include_dashboard=False,
        **options,
    )
    return True
