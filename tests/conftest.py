"""Shared test settings: deterministic torch, a hypothesis profile sized for 2 CPU cores."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "bitsweep",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("bitsweep")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


# Quiet, fast Ray for tests (DESIGN.md: measured switches for Ray 2.60 on this machine).
RAY_TEST_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}
# Custom resource that one-worker trial drivers ask for instead of a CPU (see DESIGN.md).
TRIAL_SLOTS = 4


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance shared by every test that needs it; shut down by its own API."""
    os.environ.update(RAY_TEST_ENV)
    import ray

    context = ray.init(
        num_cpus=2,
        resources={"trial_slot": TRIAL_SLOTS},
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield context
    finally:
        ray.shutdown()
