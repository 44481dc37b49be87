"""The resource request checked against the nodes of a Ray cluster before a sweep starts."""

from __future__ import annotations

from orchestrator.resources import resource_problems
from orchestrator.spec import ResourcesSpec

TWO_CORES = [{"CPU": 2.0, "memory": 1e9}]


def test_a_request_that_fits_has_no_problem() -> None:
    assert resource_problems(ResourcesSpec(cpus_per_worker=2), TWO_CORES) == []
    ddp = ResourcesSpec(workers_per_trial=2, strategy="ddp", cpus_per_worker=1)
    assert resource_problems(ddp, TWO_CORES) == []


def test_each_impossible_request_names_its_key_what_was_asked_and_what_exists() -> None:
    [(key, message)] = resource_problems(ResourcesSpec(cpus_per_worker=64), TWO_CORES)
    assert key == "resources.cpus_per_worker"
    assert "asks for 64 CPUs per worker but the largest node has 2" in message
    [(key, message)] = resource_problems(ResourcesSpec(gpus_per_worker=1), TWO_CORES)
    assert key == "resources.gpus_per_worker" and "0 GPUs" in message
    too_many = ResourcesSpec(workers_per_trial=3, strategy="ddp", cpus_per_worker=1)
    [(key, message)] = resource_problems(too_many, TWO_CORES)
    assert key == "resources.workers_per_trial" and "3 CPUs per trial" in message


def test_workers_may_spread_over_nodes() -> None:
    nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    spread = ResourcesSpec(workers_per_trial=4, strategy="ddp", cpus_per_worker=1)
    assert resource_problems(spread, nodes) == []
    assert resource_problems(ResourcesSpec(cpus_per_worker=3), nodes)  # one worker, one node
