"""BitLinear / HBitLinear / TernaryLinear: drop-in behaviour, lam endpoints, conversions."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from torch import nn

from trainables.quant import (
    BitLinear,
    HBitLinear,
    TernaryLinear,
    activation_quantize,
    hadamard_transform,
    ternary_dequantize,
)

LAYERS = [BitLinear, HBitLinear]


@pytest.mark.parametrize("cls", LAYERS)
def test_lambda_zero_is_the_original_linear(cls: type[BitLinear]) -> None:
    linear = nn.Linear(64, 24)
    layer = cls.from_linear(linear)
    layer.set_quant_lambda(0.0)
    layer.eval_lambda = None
    x = torch.randn(5, 7, 64)
    torch.testing.assert_close(layer(x), linear(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.to_linear().weight, linear.weight, atol=1e-6, rtol=0)


@given(log_in=st.integers(3, 8), out=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_hbitlinear_equals_linear_with_quantization_off(log_in: int, out: int, seed: int) -> None:
    torch.manual_seed(seed)
    linear = nn.Linear(2**log_in, out)
    layer = HBitLinear.from_linear(linear)
    layer.set_quant_lambda(0.0)
    layer.train()
    x = torch.randn(3, 2**log_in)
    torch.testing.assert_close(layer(x), linear(x), atol=1e-5, rtol=0)


def test_bitlinear_lambda_one_is_fully_quantized() -> None:
    layer = BitLinear(32, 16)
    x = torch.randn(4, 32)
    expected = nn.functional.linear(
        activation_quantize(x, 8), ternary_dequantize(layer.weight), layer.bias
    )
    torch.testing.assert_close(layer(x), expected)
    layer.train()
    torch.testing.assert_close(layer(x), expected)


def test_hbitlinear_quantizes_in_the_hadamard_domain() -> None:
    layer = HBitLinear(64, 8, bias=False)
    x = torch.randn(4, 64)
    xh = x @ layer.hadamard
    expected = nn.functional.linear(activation_quantize(xh, 8), ternary_dequantize(layer.weight))
    torch.testing.assert_close(layer(x), expected)


def test_evaluation_uses_lambda_one_unless_asked() -> None:
    layer = BitLinear(16, 8)
    layer.set_quant_lambda(0.0)
    x = torch.randn(2, 16)
    fp = nn.functional.linear(x, layer.weight, layer.bias)
    layer.train()
    torch.testing.assert_close(layer(x), fp)
    layer.eval()
    assert not torch.allclose(layer(x), fp)  # evaluated quantized
    layer.eval_lambda = None
    torch.testing.assert_close(layer(x), fp)


@pytest.mark.parametrize("cls", LAYERS)
def test_gradients_reach_weights_and_inputs_straight_through(cls: type[BitLinear]) -> None:
    layer = cls(32, 8)
    x = torch.randn(6, 32, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    # STE: the weight gradient is the one of a linear layer with the quantized input
    xin = x.detach() @ layer.hadamard if cls is HBitLinear else x.detach()
    expected = torch.ones(6, 8).T @ activation_quantize(xin, 8)
    torch.testing.assert_close(layer.weight.grad, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", LAYERS)
def test_deployed_matches_fake_quant_and_is_smaller(cls: type[BitLinear]) -> None:
    layer = cls(128, 64, input_norm=True).eval()
    x = torch.randn(3, 5, 128)
    deployed = layer.to_deployed()
    assert isinstance(deployed, TernaryLinear)
    torch.testing.assert_close(deployed(x), layer(x), atol=1e-5, rtol=0)
    float_bytes = layer.weight.numel() * layer.weight.element_size()
    code_bytes = deployed.codes.numel() * deployed.codes.element_size()
    assert code_bytes * 4 == float_bytes


def test_input_norm_is_rmsnorm() -> None:
    layer = BitLinear(8, 4, input_norm=True)
    layer.set_quant_lambda(0.0)
    layer.train()
    x = torch.randn(2, 8) * 10
    normed = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)
    torch.testing.assert_close(layer(x), nn.functional.linear(normed, layer.weight, layer.bias))


def test_invalid_layer_settings() -> None:
    with pytest.raises(ValueError, match="act_bits"):
        BitLinear(8, 8, act_bits=1)
    with pytest.raises(ValueError, match="in_features=12"):
        HBitLinear(12, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BitLinear(8, 8).set_quant_lambda(2.0)


def test_two_bitlinear_layers_learn_a_toy_task() -> None:
    """A small ternary network really learns: its loss falls well below chance."""
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(32, 4, generator=gen)
    x = torch.randn(512, 32, generator=gen)
    y = (x @ teacher).argmax(dim=1)  # 4 classes, linearly separable
    model = nn.Sequential(BitLinear(32, 64), nn.ReLU(), BitLinear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert losses[0] > 1.2  # about ln 4 at the start
    assert losses[-1] < 0.5 * losses[0]
    assert accuracy > 0.85


def _outlier_input(seed: int, features: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, features, generator=g)  # [tokens, in]
    x[:, 3] *= 40.0  # an outlier channel, what the Hadamard transform spreads (BitNet v2)
    return x


@pytest.mark.parametrize("lam", [1.0, 0.5])
@pytest.mark.parametrize("training", [True, False])
def test_hbitlinear_normalizes_the_transformed_activations(lam: float, training: bool) -> None:
    """Seed 001's order: Hadamard transform, then the norm, then quantization.

    The norm's input is ``H x`` (not ``x``), and with a non-uniform gain the output is
    ``Q_w(W') Q_a(norm(H x))``; the opposite order (norm, then Hadamard) gives another value.
    """
    torch.manual_seed(0)
    layer = HBitLinear(64, 16, bias=False, input_norm=True, act_bits=8).train(training)
    layer.set_quant_lambda(lam)
    assert layer.norm is not None
    with torch.no_grad():
        layer.norm.weight.copy_(torch.linspace(0.2, 3.0, 64))  # a learned, non-uniform gain
    seen: list[torch.Tensor] = []
    layer.norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    x = _outlier_input(1)
    with torch.no_grad():
        y = layer(x)
    h = hadamard_transform(x, layer.block_size)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], h)
    with torch.no_grad():
        lam_eff = layer.effective_lambda()
        a = layer.norm(h)
        a_q = activation_quantize(a, 8)
        w_q = ternary_dequantize(layer.weight)
        expected = nn.functional.linear(
            a + lam_eff * (a_q - a), layer.weight + lam_eff * (w_q - layer.weight)
        )
        other = layer.norm(x)  # the wrong order: norm first, then the transform
        other = hadamard_transform(other, layer.block_size)
        wrong = nn.functional.linear(
            other + lam_eff * (activation_quantize(other, 8) - other),
            layer.weight + lam_eff * (w_q - layer.weight),
        )
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
    assert (y - wrong).abs().max() > 1e-2


def test_deployed_hbitlinear_keeps_the_order() -> None:
    torch.manual_seed(2)
    layer = HBitLinear(64, 16, input_norm=True).eval()
    with torch.no_grad():
        layer.norm.weight.copy_(torch.linspace(3.0, 0.2, 64))
    x = _outlier_input(3)
    with torch.no_grad():
        torch.testing.assert_close(layer.to_deployed()(x), layer(x), atol=1e-5, rtol=0)


def test_hbitlinear_with_norm_trains_through_the_fused_path() -> None:
    # lam = 1 runs the fused node with the norm in front: gradients still reach x, W and the gain
    layer = HBitLinear(64, 16, input_norm=True).train()
    x = _outlier_input(4).requires_grad_(True)
    layer(x).square().sum().backward()
    assert layer.norm is not None and layer.norm.weight.grad is not None
    assert x.grad is not None and layer.weight.grad is not None
    assert all(bool(t.abs().sum() > 0) for t in (x.grad, layer.weight.grad, layer.norm.weight.grad))
