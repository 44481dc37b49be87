"""Non-dominated sorting and the epsilon-net order used by the Pareto-rank scheduler."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from orchestrator.pareto_rank import (
    dominates,
    epsilon_net_order,
    non_dominated_fronts,
    pareto_rank_order,
)

points_strategy = st.integers(1, 12).flatmap(
    lambda n: arrays(np.float64, (n, 2), elements=st.floats(-5, 5, allow_nan=False))
)


def test_fronts_on_a_hand_made_set() -> None:
    points = np.array([[1.0, 4.0], [2.0, 2.0], [4.0, 1.0], [3.0, 3.0], [5.0, 5.0]])
    assert non_dominated_fronts(points) == [[0, 1, 2], [3], [4]]


def test_epsilon_net_spreads_along_the_front() -> None:
    # five points on a front, three of them bunched at one end: the net takes the far end second
    front = np.array([[0.0, 1.0], [0.01, 0.99], [0.02, 0.98], [0.5, 0.5], [1.0, 0.0]])
    order = epsilon_net_order(front)
    assert order[0] == 0
    assert order[1] == 4
    assert order[2] == 3


@settings(max_examples=60, deadline=None)
@given(points_strategy)
def test_rank_order_is_a_permutation_and_fronts_respect_dominance(points: np.ndarray) -> None:
    order = pareto_rank_order(points)
    assert sorted(order) == list(range(len(points)))
    position = {index: rank for rank, index in enumerate(order)}
    for i in range(len(points)):
        for j in range(len(points)):
            if dominates(points[i], points[j]):
                assert position[i] < position[j]


@settings(max_examples=60, deadline=None)
@given(points_strategy)
def test_first_front_is_mutually_non_dominated(points: np.ndarray) -> None:
    front = non_dominated_fronts(points)[0]
    for i in front:
        assert not any(dominates(points[j], points[i]) for j in range(len(points)))


def test_nan_ranks_last() -> None:
    points = np.array([[np.nan, 0.0], [1.0, 1.0], [2.0, 2.0]])
    assert pareto_rank_order(points)[-1] == 0
