"""Check a sweep's ``resources`` request against the Ray cluster before any trial starts.

Tune waits forever for a trial whose request no node can satisfy; on a fixed cluster that is a
silent hang. :func:`check_resources` turns it into one message naming the key, what was asked
and what the cluster has (exit code 2).
"""

from __future__ import annotations

from typing import Any

from orchestrator.spec import SweepSpecError


def node_resources() -> list[dict[str, float]]:
    """The total resources of each alive node of the connected Ray cluster."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def resource_problems(resources: Any, nodes: list[dict[str, float]]) -> list[tuple[str, str]]:
    """(key, message) for each part of ``resources`` (a ResourcesSpec) no node can hold.

    A worker needs ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs on one node; a trial's
    ``workers_per_trial`` workers together must fit in the whole cluster.
    """
    if not nodes:
        return [("resources", "the Ray cluster has no alive node")]
    problems: list[tuple[str, str]] = []
    total_cpu = sum(n.get("CPU", 0.0) for n in nodes)
    total_gpu = sum(n.get("GPU", 0.0) for n in nodes)
    largest_cpu = max(n.get("CPU", 0.0) for n in nodes)
    largest_gpu = max(n.get("GPU", 0.0) for n in nodes)
    where = f"(cluster: {len(nodes)} node(s), {_n(total_cpu)} CPUs, {_n(total_gpu)} GPUs)"
    cpus, gpus = resources.cpus_per_worker, resources.gpus_per_worker
    if cpus > largest_cpu:
        problems.append(
            (
                "resources.cpus_per_worker",
                f"asks for {_n(cpus)} CPUs per worker but the largest node has "
                f"{_n(largest_cpu)} {where}; lower it to at most {_n(largest_cpu)}",
            )
        )
    if gpus > largest_gpu:
        problems.append(
            (
                "resources.gpus_per_worker",
                f"asks for {_n(gpus)} GPUs per worker but the largest node has "
                f"{_n(largest_gpu)} {where}; set it to 0 or run on a cluster with GPUs",
            )
        )
    workers = resources.workers_per_trial
    if not problems and workers * cpus > total_cpu:
        problems.append(
            (
                "resources.workers_per_trial",
                f"{workers} workers x {_n(cpus)} CPUs = {_n(workers * cpus)} CPUs per trial, "
                f"more than the cluster's {_n(total_cpu)} {where}",
            )
        )
    if not problems and gpus and workers * gpus > total_gpu:
        problems.append(
            (
                "resources.workers_per_trial",
                f"{workers} workers x {_n(gpus)} GPUs = {_n(workers * gpus)} GPUs per trial, "
                f"more than the cluster's {_n(total_gpu)} {where}",
            )
        )
    return problems


def check_resources(spec: Any) -> None:
    """Raise :class:`SweepSpecError` (exit 2) when no trial of ``spec`` could ever be placed."""
    problems = resource_problems(spec.resources, node_resources())
    if problems:
        raise SweepSpecError(problems)


def _n(value: float) -> str:
    return f"{value:g}"
