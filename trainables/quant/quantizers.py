"""Pure quantizer functions of BitNet b1.58 and the straight-through blend they train with.

Formulas from BitNet b1.58 (Ma et al., arXiv 2402.17764):

* weights, absmean ternary: ``gamma = mean(|W|)``, ``W_q = clip(round(W / (gamma + eps)), -1, 1)``,
  dequantized as ``W_q * gamma`` (one scale per tensor);
* activations, per-token absmax: ``s = Q_P / max(|x|, eps)`` over the last dimension,
  ``x_q = clip(round(x * s), -Q_P - 1, Q_P) / s`` with ``Q_P = 2^(b-1) - 1``.

The gradual blend ``x + lam * (q(x) - x).detach()`` is the straight-through estimator at ``lam = 1``
and full precision at ``lam = 0`` (Hugging Face, "Fine-tuning LLMs to 1.58bit").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .bounds import DEFAULT_EPS


class _ActivationSTE(torch.autograd.Function):
    """Per-token absmax activation quantization with a straight-through gradient.

    Forward returns the quantized values themselves, backward the incoming gradient unchanged:
    what ``x + (q(x) - x).detach()`` computes, without its two extra full-size tensors (the value
    differs from that expression only by the rounding of ``x + (q - x)``, at most one ulp).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, bits: int, eps: float) -> Tensor:
        return activation_quantize_values(x, bits, eps)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad, None, None


class _TernarySTE(torch.autograd.Function):
    """``W_q * gamma`` (BitNet b1.58) in forward, the gradient straight to ``W`` in backward."""

    @staticmethod
    def forward(ctx: Any, w: Tensor, eps: float) -> Tensor:
        return ternary_dequantize_values(w, eps)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def ternary_ste(w: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """The ternary weight ``W_q * gamma`` with a straight-through gradient to ``w``.

    Equals ``ste(w, ternary_dequantize(w).detach())`` (BitNet b1.58, arXiv 2402.17764) up to the
    rounding of ``w + (W_q - w)``, with two new tensors instead of seven.
    """
    return _TernarySTE.apply(w, eps)


def ternary_quantize(w: Tensor, eps: float = DEFAULT_EPS) -> tuple[Tensor, Tensor]:
    """Absmean ternary quantization of a weight tensor (BitNet b1.58, arXiv 2402.17764).

    Args:
        w: weights of any shape.
        eps: guards the division for an all-zero tensor.

    Returns:
        ``(q, scale)``: ``q`` an int8 tensor of ``w``'s shape with values in {-1, 0, 1}, and
        ``scale`` the 0-d float tensor ``mean(|w|)``, so that ``w ~= q * scale``.
    """
    scale = w.detach().abs().mean()  # [] gamma
    q = torch.clamp(torch.round(w.detach() / (scale + eps)), -1, 1).to(torch.int8)
    return q, scale


def ternary_dequantize(w: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """``q * gamma`` for ``w`` in ``w``'s dtype, computed without building the int8 tensor.

    ``gamma`` keeps its gradient (it is a function of ``w``); the rounding has none.
    """
    gamma = w.abs().mean()  # []
    return torch.clamp(torch.round(w / (gamma.detach() + eps)), -1, 1).detach() * gamma


def ternary_dequantize_values(w: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """The values of :func:`ternary_dequantize` (``W_q * gamma``, BitNet b1.58), no gradient.

    The same operations as :func:`ternary_dequantize` in the same order (so the same bits), but
    the division's result is rounded, clipped and scaled in place: two new tensors (``|w|`` for
    the mean, and the result) instead of five.
    """
    with torch.no_grad():
        gamma = w.abs().mean()  # []
        q = torch.div(w, gamma + eps)  # the one new tensor, rounded and scaled in place
        return q.round_().clamp_(-1, 1).mul_(gamma)


def activation_quantize(x: Tensor, bits: int = 8, eps: float = DEFAULT_EPS) -> Tensor:
    """Per-token absmax fake quantization to ``bits`` signed bits, with a straight-through gradient.

    The scale is taken over the last dimension (one per token). Returns a tensor of ``x``'s shape
    and dtype whose values lie on the quantization grid; its gradient is the identity.
    """
    return _ActivationSTE.apply(x, bits, eps)


def activation_quantize_values(x: Tensor, bits: int = 8, eps: float = DEFAULT_EPS) -> Tensor:
    """The quantized values of :func:`activation_quantize`, with no gradient.

    ``s = Q_P / max(|x|, eps)`` per token and ``clip(round(x * s), -Q_P - 1, Q_P) / s``
    (BitNet b1.58, arXiv 2402.17764), computed with one full-size temporary.
    """
    codes, scale = activation_codes(x, bits, eps)
    return codes.div_(scale)


def activation_codes(x: Tensor, bits: int = 8, eps: float = DEFAULT_EPS) -> tuple[Tensor, Tensor]:
    """The integer grid points and scales of per-token absmax quantization (BitNet b1.58).

    Returns ``(codes, s)``: ``codes = clip(round(x * s), -Q_P - 1, Q_P)`` in ``x``'s dtype (whole
    numbers) and ``s = Q_P / max(|x|, eps)`` of shape ``[..., 1]``, so that the quantized value
    is ``codes / s``. No gradient.
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"activation bits must be in 2..16, got {bits}")
    q_max = 2 ** (bits - 1) - 1
    with torch.no_grad():
        # max |x| as the larger of max(x) and -min(x): exact, and two reductions that allocate
        # nothing of x's size (abs() would; torch.aminmax over a dim is ~10x slower on CPU)
        hi = x.amax(dim=-1, keepdim=True)  # [..., 1]
        lo = x.amin(dim=-1, keepdim=True)  # [..., 1]
        # q_max / a is evaluated by torch as reciprocal(a) * q_max: the same here, bit for bit
        scale = torch.maximum(hi, lo.neg_()).clamp_min_(eps).reciprocal_().mul_(q_max)
        codes = torch.mul(x, scale).round_()
        if not _clip_is_identity(x.dtype, eps):
            codes.clamp_(-q_max - 1, q_max)
        return codes, scale


def _clip_is_identity(dtype: torch.dtype, eps: float) -> bool:
    # With a = max(|x|_max, eps) and s = fl(fl(1/a) * Q_P), every |fl(x * s)| is at most
    # Q_P (1 + u)^3 (+ a subnormal term below 2^-22 Q_P when 1/a is subnormal) < Q_P + 0.5 for
    # Q_P <= 32767 and the unit roundoff u of float32/64: round() then lies in [-Q_P, Q_P] and the
    # clip of the formula cannot change a value, so it is skipped. It is kept for half precision
    # (u = 2^-8 or 2^-11 breaks the bound) and for an eps so small that 1/eps may overflow.
    return dtype in (torch.float32, torch.float64) and eps >= 1e-30


def ste(x: Tensor, x_quantized: Tensor) -> Tensor:
    """Straight-through estimator: the value of ``x_quantized``, the gradient of ``x``."""
    return x + (x_quantized - x).detach()


def blend(x: Tensor, x_quantized: Tensor, lam: float) -> Tensor:
    """Gradual quantization ``x + lam * (x_q - x).detach()``; ``lam`` in [0, 1].

    ``lam = 0`` returns ``x`` itself and ``lam = 1`` the straight-through estimator.
    """
    if lam == 0.0:
        return x
    if lam == 1.0:
        return ste(x, x_quantized)
    return x + lam * (x_quantized - x).detach()


def blend_activation(x: Tensor, lam: float, bits: int, eps: float = DEFAULT_EPS) -> Tensor:
    """``blend(x, q(x), lam)`` for the per-token absmax activation quantizer ``q``.

    At ``lam = 1`` (the whole training once the warm-up is over) it uses the straight-through
    function, which skips the two full-size temporaries of ``x + (q - x).detach()``.
    """
    if lam == 1.0:
        return _ActivationSTE.apply(x, bits, eps)
    if lam == 0.0:
        return x
    return blend(x, activation_quantize_values(x, bits, eps), lam)


def blend_ternary(w: Tensor, lam: float, eps: float = DEFAULT_EPS) -> Tensor:
    """``blend(w, W_q * gamma, lam)`` for the absmean ternary weight quantizer (BitNet b1.58)."""
    if lam == 1.0:
        return ternary_ste(w, eps)
    if lam == 0.0:
        return w
    return blend(w, ternary_dequantize_values(w, eps), lam)


def check_lambda(lam: float, name: str = "lam") -> float:
    """Validate a quantization blend factor, returning it as a float."""
    lam = float(lam)
    if not 0.0 <= lam <= 1.0 or lam != lam:
        raise ValueError(f"{name} must be in [0, 1] (0 = full precision, 1 = quantized), got {lam}")
    return lam
