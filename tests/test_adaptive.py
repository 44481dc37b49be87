"""AdaptiveBitLinear (seed 000): learnable bit-widths, rounding, bit usage, deployment, learning."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from torch import nn

from trainables.quant import (
    AdaptiveBitLinear,
    BitBalancedCrossEntropy,
    DeployedAdaptiveLinear,
    absmax_fake_quantize,
    compute_total_bit_usage,
    convert,
    prepare,
)


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({"min_bits": 6, "max_bits": 4, "init_bits": 5}, "min_bits must be <= max_bits"),
        ({"max_bits": 9}, "max_bits"),
        ({"min_bits": 1}, "min_bits"),
        ({"init_bits": 1.5}, "init_bits"),
        ({"min_bits": 2, "max_bits": 4, "init_bits": 8}, "init_bits"),
    ],
)
def test_invalid_bit_settings_name_the_setting(options: dict, setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        prepare(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), "adaptive", **options)
    with pytest.raises(ValueError, match=setting):
        AdaptiveBitLinear(4, 4, **options)


@given(
    init=st.floats(2.0, 8.0),
    bias=st.booleans(),
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
)
def test_bit_usage_is_rounded_bits_times_stored_parameters(
    init: float, bias: bool, shape: tuple[int, int]
) -> None:
    layer = AdaptiveBitLinear(*shape, bias=bias, init_bits=init)
    numel = shape[0] * shape[1] + (shape[1] if bias else 0)
    bits = round(init)  # nearest integer (ties to even, as torch.round)
    assert layer.bits == bits
    assert layer.bit_usage().item() == bits * numel
    layer.eval()
    assert layer.to_deployed().bit_usage().item() == bits * numel


def test_bit_penalty_gradient_reaches_and_lowers_the_bit_width() -> None:
    layer = AdaptiveBitLinear(16, 8, init_bits=6.3)
    layer.bit_usage().backward()
    assert layer.bit_width.grad is not None
    assert layer.bit_width.grad.item() == 16 * 8 + 8  # straight-through: d(bits * n)/db = n
    opt = torch.optim.SGD([layer.bit_width], lr=1e-3)
    before = layer.bit_usage().item()
    for _ in range(10):
        opt.zero_grad()
        layer.bit_usage().backward()
        opt.step()
    assert layer.bit_width.item() == pytest.approx(6.3 - 10 * 1e-3 * 136, abs=1e-4)
    assert layer.bit_usage().item() < before  # 6 -> 5 bits


def test_bit_width_is_clamped_but_can_come_back() -> None:
    layer = AdaptiveBitLinear(4, 4, init_bits=2.0, min_bits=2, max_bits=4)
    with torch.no_grad():
        layer.bit_width.fill_(1.2)  # pushed below min_bits by the penalty
    assert layer.bits == 2
    layer.bit_usage().backward()  # the penalty would push further out: blocked
    assert layer.bit_width.grad.item() == 0.0
    layer.bit_width.grad = None
    (-layer.bit_usage()).backward()  # a loss that wants more bits pulls it back in
    assert layer.bit_width.grad.item() < 0
    with torch.no_grad():
        layer.bit_width.fill_(7.0)
    assert layer.bits == 4


def test_training_rounds_stochastically_and_without_bias() -> None:
    layer = AdaptiveBitLinear(4, 4, init_bits=3.3)
    samples = torch.stack([layer.sampled_bits().detach() for _ in range(4000)])
    assert set(samples.tolist()) == {3.0, 4.0}
    assert samples.mean().item() == pytest.approx(3.3, abs=0.04)  # E[bits] = 3.3
    assert layer.rounded_bits().item() == 3.0  # evaluation: nearest


@given(bits=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_weights_sit_on_a_b_bit_absmax_grid(bits: int, seed: int) -> None:
    torch.manual_seed(seed)
    layer = AdaptiveBitLinear(16, 8, init_bits=float(bits)).eval()
    w_q = absmax_fake_quantize(layer.weight, layer.rounded_bits())
    q_p = 2 ** (bits - 1) - 1
    scale = layer.weight.abs().max() / q_p
    codes = w_q / scale
    torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
    assert codes.round().abs().max().item() == q_p  # the largest weight maps to the top code
    assert len(torch.unique(codes.round())) <= 2**bits
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, w_q, layer.bias))


def test_task_loss_also_reaches_the_bit_width() -> None:
    layer = AdaptiveBitLinear(16, 8, init_bits=3.0)
    layer(torch.randn(4, 16)).pow(2).sum().backward()
    assert layer.bit_width.grad is not None and layer.bit_width.grad.abs() > 0
    assert layer.weight.grad is not None


@given(seed=st.integers(0, 2**16), init=st.floats(2.0, 8.0), quantize_input=st.booleans())
def test_deployed_equals_fake_quantized_evaluation(
    seed: int, init: float, quantize_input: bool
) -> None:
    torch.manual_seed(seed)
    layer = AdaptiveBitLinear(12, 5, init_bits=init, quantize_input=quantize_input).eval()
    x = torch.randn(2, 3, 12)
    deployed = layer.to_deployed()
    assert isinstance(deployed, DeployedAdaptiveLinear)
    assert deployed.codes.dtype == torch.int8 and deployed.bits == layer.bits
    torch.testing.assert_close(deployed(x), layer(x), atol=1e-5, rtol=0)


def test_lambda_zero_is_the_float_layer() -> None:
    linear = nn.Linear(8, 3)
    layer = AdaptiveBitLinear.from_linear(linear, init_bits=2.0, quantize_input=True)
    layer.set_quant_lambda(0.0)
    layer.eval_lambda = None
    x = torch.randn(4, 8)
    torch.testing.assert_close(layer(x), linear(x))
    torch.testing.assert_close(layer.to_linear().weight, linear.weight)


def test_adaptive_network_sheds_bits_on_digits_while_learning() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    x_tr, x_te = (torch.tensor(a, dtype=torch.float32) / 16 for a in (x_tr, x_te))
    y_tr, y_te = torch.tensor(y_tr), torch.tensor(y_te)
    model = nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    prepare(model, "adaptive", init_bits=8, min_bits=2, max_bits=8, keep_head=False)
    loss_fn = BitBalancedCrossEntropy(weight=0.05, normalize=True).set_model(model)
    bit_widths = [p for n, p in model.named_parameters() if n.endswith("bit_width")]
    others = [p for n, p in model.named_parameters() if not n.endswith("bit_width")]
    opt = torch.optim.Adam([{"params": others, "lr": 3e-3}, {"params": bit_widths, "lr": 0.05}])
    start_bits = compute_total_bit_usage(model).item()
    gen = torch.Generator().manual_seed(0)
    for _ in range(15):
        for idx in torch.randperm(len(x_tr), generator=gen).split(64):
            loss = loss_fn(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    end_bits = compute_total_bit_usage(model).item()
    with torch.no_grad():
        accuracy = (convert(model)(x_te).argmax(1) == y_te).float().mean().item()
    assert start_bits == 8 * sum(p.numel() for p in others)
    assert end_bits < 0.75 * start_bits  # at most 6 bits on average, from 8
    assert accuracy > 0.8  # chance is 0.1
    assert not math.isnan(end_bits)


def test_storage_bits_follow_the_rounded_bit_width() -> None:
    layer = AdaptiveBitLinear(16, 8, init_bits=4.6)
    assert layer.storage_bits() == 5 * 128 + 32
