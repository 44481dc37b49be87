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

import torch
from torch import Tensor

DEFAULT_EPS = 1e-5


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


def activation_quantize(x: Tensor, bits: int = 8, eps: float = DEFAULT_EPS) -> Tensor:
    """Per-token absmax fake quantization to ``bits`` signed bits, with a straight-through gradient.

    The scale is taken over the last dimension (one per token). Returns a tensor of ``x``'s shape
    and dtype whose values lie on the quantization grid; its gradient is the identity.
    """
    return ste(x, activation_quantize_values(x, bits, eps))


def activation_quantize_values(x: Tensor, bits: int = 8, eps: float = DEFAULT_EPS) -> Tensor:
    """The quantized values of :func:`activation_quantize`, with no gradient."""
    if not 2 <= bits <= 16:
        raise ValueError(f"activation bits must be in 2..16, got {bits}")
    q_max = 2 ** (bits - 1) - 1
    with torch.no_grad():
        # [..., 1]: one scale per token
        scale = q_max / x.abs().amax(dim=-1, keepdim=True).clamp_min(eps)
        return torch.clamp(torch.round(x * scale), -q_max - 1, q_max) / scale


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


def check_lambda(lam: float, name: str = "lam") -> float:
    """Validate a quantization blend factor, returning it as a float."""
    lam = float(lam)
    if not 0.0 <= lam <= 1.0 or lam != lam:
        raise ValueError(f"{name} must be in [0, 1] (0 = full precision, 1 = quantized), got {lam}")
    return lam
