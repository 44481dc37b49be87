"""What the search benchmark measures from a finished sweep's MLflow runs.

A search's cost is the training steps all its trials ran; the report stream (every metric report,
in the order MLflow received it) says how many steps had been spent when a report reached a
target, and for two objectives how the dominated hypervolume grew with the steps spent.
"""

from __future__ import annotations

import math
from typing import Any

Stream = list[tuple[int, str, int, dict[str, float]]]  # (ms timestamp, run id, step, metrics)


def report_stream(uri: str, run_ids: list[str], metrics: list[str]) -> Stream:
    """Every report of the runs with the values of ``metrics`` at that step, in arrival order."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    reports: dict[tuple[str, int], tuple[int, dict[str, float]]] = {}
    for run_id in run_ids:
        for metric in metrics:
            for entry in client.get_metric_history(run_id, metric):
                key = (run_id, int(entry.step))
                stamp, values = reports.get(key, (entry.timestamp, {}))
                values[metric] = float(entry.value)
                reports[key] = (max(stamp, entry.timestamp), values)
    stream = [(stamp, run_id, step, values) for (run_id, step), (stamp, values) in reports.items()]
    return sorted(stream, key=lambda r: (r[0], r[2]))


def better(value: float, target: float, mode: str) -> bool:
    """Whether ``value`` is at least as good as ``target``."""
    return value <= target if mode == "min" else value >= target


def steps_to_reach(stream: Stream, metric: str, target: float, mode: str) -> int | None:
    """Steps spent by all trials when a report of ``metric`` first reaches ``target``."""
    last: dict[str, int] = {}
    for _, run_id, step, values in stream:
        last[run_id] = max(last.get(run_id, 0), step)
        value = values.get(metric, math.nan)
        if not math.isnan(value) and better(value, target, mode):
            return sum(last.values())
    return None


def total_steps(stream: Stream) -> int:
    """All the steps the search's trials ran."""
    last: dict[str, int] = {}
    for _, run_id, step, _ in stream:
        last[run_id] = max(last.get(run_id, 0), step)
    return sum(last.values())


def final_values(stream: Stream, metric: str, full_steps: int) -> list[float]:
    """The last ``metric`` of every trial that ran all ``full_steps`` (one independent draw each
    for a random search)."""
    last: dict[str, tuple[int, float]] = {}
    for _, run_id, step, values in stream:
        if metric in values and step >= last.get(run_id, (-1, 0.0))[0]:
            last[run_id] = (step, values[metric])
    return [v for step, v in last.values() if step >= full_steps and not math.isnan(v)]


def final_by_run(stream: Stream, metric: str, full_steps: int) -> dict[str, float]:
    """The last ``metric`` of every trial that ran all ``full_steps``, by run id."""
    last: dict[str, tuple[int, float]] = {}
    for _, run_id, step, values in stream:
        if metric in values and step >= last.get(run_id, (-1, 0.0))[0]:
            last[run_id] = (step, values[metric])
    return {r: v for r, (step, v) in last.items() if step >= full_steps and not math.isnan(v)}


def rare_target(draws: list[float], mode: str, rate: float = 0.05) -> tuple[float, float]:
    """A target that at most ``rate`` of ``draws`` reach, and the share that do reach it."""
    ordered = sorted(draws, reverse=(mode == "max"))  # best first
    keep = max(1, math.floor(rate * len(ordered)))
    target = ordered[keep - 1]
    reached = sum(better(v, target, mode) for v in ordered) / len(ordered)
    return target, reached


def hypervolume_2d(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both objectives minimized) up to ``reference``."""
    inside = sorted(
        (x, y) for x, y in points if x < reference[0] and y < reference[1] and math.isfinite(x + y)
    )
    # a staircase: the x-sorted non-dominated points, each with its strip up to the reference
    front: list[tuple[float, float]] = []
    for x, y in inside:
        if not front or y < front[-1][1]:
            front.append((x, y))
    area = 0.0
    for i, (x, y) in enumerate(front):
        right = front[i + 1][0] if i + 1 < len(front) else reference[0]
        area += (right - x) * (reference[1] - y)
    return area


def hypervolume_curve(
    stream: Stream, objectives: list[tuple[str, str]], reference: tuple[float, float]
) -> list[tuple[int, float]]:
    """(steps spent, hypervolume of every report so far) after each report."""
    signs = [1.0 if mode == "min" else -1.0 for _, mode in objectives]
    points: list[tuple[float, float]] = []
    last: dict[str, int] = {}
    curve = []
    for _, run_id, step, values in stream:
        last[run_id] = max(last.get(run_id, 0), step)
        if all(m in values for m, _ in objectives):
            a, b = (s * values[m] for s, (m, _) in zip(signs, objectives, strict=True))
            points.append((a, b))
        curve.append((sum(last.values()), hypervolume_2d(points, reference)))
    return curve


def steps_to_hypervolume(curve: list[tuple[int, float]], level: float) -> int | None:
    """Steps spent when the hypervolume first reaches ``level``."""
    for steps, volume in curve:
        if volume >= level - 1e-12:
            return steps
    return None


def summary(values: list[int | None], totals: list[int]) -> dict[str, Any]:
    """Median and range of steps to target over seeds; a search that never reached it is charged
    every step it ran (and counted as a miss)."""
    charged = sorted(v if v is not None else t for v, t in zip(values, totals, strict=True))
    n = len(charged)
    median = charged[n // 2] if n % 2 else (charged[n // 2 - 1] + charged[n // 2]) / 2
    return {
        "median": median,
        "min": charged[0],
        "max": charged[-1],
        "misses": sum(v is None for v in values),
        "per_seed": values,
    }
