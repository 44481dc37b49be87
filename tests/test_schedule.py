"""The gradual lam schedules and setting lam on a whole model in one call."""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
import pytest
from hypothesis import given
from torch import nn

from trainables.quant import LambdaSchedule, apply_lambda_schedule, prepare, quant_layers

KINDS = ["linear", "exponential", "sigmoid"]


@pytest.mark.parametrize("kind", KINDS)
def test_warmup_goes_from_zero_to_one_then_stays(kind: str) -> None:
    schedule = LambdaSchedule(kind=kind, warmup_frac=0.4, k=5.0)
    values = [schedule.at(step, 100) for step in range(100)]
    assert values[0] == 0.0
    assert values[40] == pytest.approx(1.0) and all(v == pytest.approx(1.0) for v in values[40:])
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(values))


def test_known_values() -> None:
    assert LambdaSchedule(kind="linear", warmup_frac=0.5).at(25, 100) == pytest.approx(0.5)
    assert LambdaSchedule(kind="exponential", warmup_frac=0.5, k=2).at(25, 100) == pytest.approx(
        0.75
    )
    assert LambdaSchedule(kind="sigmoid", warmup_frac=0.5, k=10).at(25, 100) == pytest.approx(0.5)
    assert LambdaSchedule(kind="constant", value=0.3).at(99, 100) == 0.3
    assert LambdaSchedule(kind="linear", warmup_frac=0.0).at(0, 10) == 1.0


@given(
    kind=st.sampled_from(KINDS),
    frac=st.floats(0.0, 1.0),
    k=st.floats(0.1, 100),
    step=st.integers(0, 10_000),
    total=st.integers(1, 10_000),
)
def test_lambda_always_in_unit_interval(
    kind: str, frac: float, k: float, step: int, total: int
) -> None:
    assert 0.0 <= LambdaSchedule(kind=kind, warmup_frac=frac, k=k).at(step, total) <= 1.0


def test_apply_sets_every_layer() -> None:
    model = prepare(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)), "ternary")
    lam = apply_lambda_schedule(model, LambdaSchedule(warmup_frac=0.5), step=10, total_steps=40)
    assert lam == pytest.approx(0.5)
    layers = quant_layers(model)
    assert len(layers) == 2 and all(layer.quant_lambda == pytest.approx(0.5) for layer in layers)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "cosine"}, "schedule kind"),
        ({"warmup_frac": 1.5}, "lambda_warmup_frac"),
        ({"k": 0}, "k must be"),
        ({"kind": "constant", "value": -1}, r"\[0, 1\]"),
    ],
)
def test_invalid_schedules(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LambdaSchedule(**kwargs)
