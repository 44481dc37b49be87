"""The gradual lam schedules and setting lam on a whole model in one call."""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
import pytest
from hypothesis import given
from torch import nn

from trainables.quant import (
    AdaptiveBitLinear,
    BitLinear,
    HBitLinear,
    LambdaSchedule,
    LSQLinear,
    apply_lambda_schedule,
    prepare,
    quant_layers,
)

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


def _mixed() -> nn.Sequential:
    """One layer of each quantized kind: ternary, H-BitLinear, LSQ, learned bit-width."""
    return nn.Sequential(
        BitLinear(8, 8), HBitLinear(8, 8), LSQLinear(8, 8, weight_bits=2, act_bits=2),
        AdaptiveBitLinear(8, 8),
    )  # fmt: skip


SCOPES = [
    ((), {"ternary": 0.25, "hadamard": 0.25, "lsq": 1.0, "adaptive": 1.0}),  # the default
    (("all",), {"ternary": 0.25, "hadamard": 0.25, "lsq": 0.25, "adaptive": 0.25}),
    (("lsq", "adaptive"), {"ternary": 1.0, "hadamard": 1.0, "lsq": 0.25, "adaptive": 0.25}),
]


@pytest.mark.parametrize(("scope", "expected"), SCOPES)
def test_the_blend_reaches_only_the_schemes_in_scope(scope: tuple, expected: dict) -> None:
    """The lam blend is a BitNet device: by default LSQ (seed 002's stage 1 is pure LSQ) and
    learned bit-widths (seed 000) quantize fully from the first step."""
    model = _mixed()
    kwargs = {"applies_to": scope} if scope else {}
    lam = apply_lambda_schedule(model, LambdaSchedule(warmup_frac=0.4), 10, 100, **kwargs)
    assert lam == pytest.approx(0.25)
    got = {layer.scheme_name: layer.quant_lambda for layer in quant_layers(model)}
    assert got == pytest.approx(expected)
    assert all(layer.eval_lambda == 1.0 for layer in quant_layers(model))


def test_a_model_outside_the_scope_reports_lambda_one() -> None:
    model = prepare(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), "lsq")
    assert apply_lambda_schedule(model, LambdaSchedule(), 0, 100) == 1.0
    assert all(layer.quant_lambda == 1.0 for layer in quant_layers(model))
    assert apply_lambda_schedule(nn.Linear(2, 2), LambdaSchedule(), 0, 100) == 0.0  # nothing


@pytest.mark.parametrize(
    ("value", "expected"),
    [("all", ("all",)), ("lsq, ternary", ("lsq", "ternary")), (["adaptive"], ("adaptive",))],
)
def test_config_scope(value: object, expected: tuple) -> None:
    from trainables.config import RunConfig

    assert RunConfig().schedule.applies_to == ("ternary", "hadamard")
    cfg = RunConfig.from_dict({"schedule": {"applies_to": value}})
    assert cfg.schedule.applies_to == expected


def test_config_scope_names_the_key() -> None:
    from trainables.config import ConfigError, RunConfig

    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"schedule": {"applies_to": "ternery"}})
    assert info.value.problems[0][0] == "schedule.applies_to"
    assert "ternery" in info.value.problems[0][1]
