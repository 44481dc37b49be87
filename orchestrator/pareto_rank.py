"""Ranking points with several objectives: non-dominated sorting and an epsilon-net tie break.

MO-ASHA (Schmucker et al., "Multi-objective Asynchronous Successive Halving", 2021) promotes the
trials of a rung in the order NSGA-II's non-dominated sorting gives (Deb et al. 2002), breaking
ties inside the last admitted front with an epsilon-net: a greedy farthest-point traversal that
picks points spread along the front instead of clustered on one end. Pure numpy; every objective
is minimized here (callers negate the ones to maximize).
"""

from __future__ import annotations

import numpy as np


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` Pareto-dominates ``b`` (all objectives <=, at least one <; minimization)."""
    return bool(np.all(a <= b) and np.any(a < b))


def non_dominated_fronts(points: np.ndarray) -> list[list[int]]:
    """Indices of ``points`` ``[N, M]`` grouped into fronts: front 0 is non-dominated, front 1 is
    non-dominated once front 0 is removed, and so on (Deb et al. 2002, fast non-dominated sort).

    A point with a NaN objective (a diverged trial) counts as worse than every number in every
    objective, so it ranks behind all finite points.
    """
    values = np.asarray(points, dtype=float)  # [N, M]
    values = np.where(np.isnan(values).any(axis=1, keepdims=True), np.inf, values)
    n = len(values)
    dominated_by: list[list[int]] = [[] for _ in range(n)]  # i -> points i dominates
    counts = np.zeros(n, dtype=int)  # how many points dominate i
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(values[i], values[j]):
                dominated_by[i].append(j)
                counts[j] += 1
            elif dominates(values[j], values[i]):
                dominated_by[j].append(i)
                counts[i] += 1
    fronts: list[list[int]] = []
    current = [i for i in range(n) if counts[i] == 0]
    while current:
        fronts.append(current)
        following: list[int] = []
        for i in current:
            for j in dominated_by[i]:
                counts[j] -= 1
                if counts[j] == 0:
                    following.append(j)
        current = sorted(following)
    return fronts


def epsilon_net_order(points: np.ndarray) -> list[int]:
    """An order of ``points`` ``[N, M]`` (one front) for tie breaking: start at the point best
    in the first objective, then repeatedly take the point farthest from those already taken
    (objectives scaled to [0, 1] over the front), as MO-ASHA's epsilon-net selection does.
    """
    values = np.where(np.isnan(points), np.inf, np.asarray(points, dtype=float))
    n = len(values)
    if n <= 1:
        return list(range(n))
    finite = np.where(np.isfinite(values), values, np.nan)
    low = np.nanmin(finite, axis=0) if np.isfinite(finite).any() else np.zeros(values.shape[1])
    high = np.nanmax(finite, axis=0) if np.isfinite(finite).any() else np.ones(values.shape[1])
    span = np.where(high - low > 0, high - low, 1.0)
    scaled = np.nan_to_num((finite - low) / span, nan=2.0)  # [N, M], non-finite far away
    order = [int(np.lexsort(scaled.T[::-1])[0])]  # best first objective, then the next ones
    distance = np.linalg.norm(scaled - scaled[order[0]], axis=1)  # [N] to the chosen set
    distance[order[0]] = -1.0
    while len(order) < n:
        nxt = int(np.argmax(distance))
        order.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(scaled - scaled[nxt], axis=1))
        distance[order] = -1.0
    return order


def pareto_rank_order(points: np.ndarray) -> list[int]:
    """All indices of ``points`` ``[N, M]`` from best to worst: front by front, each front in
    epsilon-net order. The first ``k`` are the ``k`` points MO-ASHA would promote."""
    points = np.asarray(points, dtype=float)
    if points.ndim != 2:
        raise ValueError(f"points must be [N, M], got shape {points.shape}")
    order: list[int] = []
    for front in non_dominated_fronts(points):
        local = epsilon_net_order(points[front])
        order.extend(front[i] for i in local)
    return order
