"""The BitNet b1.58 quantizers: values, scales and straight-through gradients."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from trainables.quant import activation_quantize, blend, ternary_dequantize, ternary_quantize
from trainables.quant.quantizers import check_lambda

shapes = st.lists(st.integers(1, 9), min_size=1, max_size=3)


@given(shape=shapes, seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3))
def test_ternary_codes_and_scale(shape: list[int], seed: int, scale: float) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale
    q, gamma = ternary_quantize(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert set(q.unique().tolist()) <= {-1, 0, 1}
    torch.testing.assert_close(gamma, w.abs().mean())
    # each code is the nearest level of w / gamma clipped to [-1, 1]
    expected = torch.clamp(torch.round(w / (gamma + 1e-5)), -1, 1)
    assert torch.equal(q.float(), expected)
    torch.testing.assert_close(ternary_dequantize(w), q.float() * gamma)


def test_ternary_known_values() -> None:
    w = torch.tensor([[0.9, -0.1, 0.0, -2.0]])  # mean|w| = 0.75
    q, gamma = ternary_quantize(w)
    assert gamma.item() == pytest.approx(0.75)
    assert q.tolist() == [[1, 0, 0, -1]]


@given(bits=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_activation_quantize_grid_and_absmax(bits: int, seed: int) -> None:
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(seed))
    xq = activation_quantize(x, bits)
    q_max = 2 ** (bits - 1) - 1
    scale = q_max / x.abs().amax(-1, keepdim=True)
    codes = xq * scale
    torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
    assert codes.abs().max() <= q_max + 1e-4
    # the per-token absmax element is represented exactly
    torch.testing.assert_close(xq.abs().amax(-1), x.abs().amax(-1))
    assert (xq - x).abs().max() <= (0.5 / scale).max() + 1e-6


def test_activation_quantize_has_identity_gradient() -> None:
    x = torch.randn(4, 8, requires_grad=True)
    upstream = torch.randn(4, 8)
    activation_quantize(x, 4).backward(upstream)
    torch.testing.assert_close(x.grad, upstream)


@given(lam=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_blend_values_and_ste_gradient(lam: float, seed: int) -> None:
    x = torch.randn(10, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    xq = x.detach().round()
    y = blend(x, xq, lam)
    torch.testing.assert_close(y, x + lam * (xq - x.detach()))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(10))


def test_blend_endpoints() -> None:
    x = torch.randn(6)
    xq = x.round()
    assert blend(x, xq, 0.0) is x
    torch.testing.assert_close(blend(x, xq, 1.0), xq)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_lambda_outside_unit_interval_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_lambda(bad)


def test_activation_bits_out_of_range() -> None:
    with pytest.raises(ValueError, match="bits"):
        activation_quantize(torch.randn(3), bits=1)
