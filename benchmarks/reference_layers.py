"""The straightforward STE layers the optimized ones are measured against ("before" rows).

Each class subclasses the optimized layer and overrides only ``forward`` with the plain autograd
formulation the quantized core had before benchmark 1 (the code of commit 5eb0b09): the
straight-through estimator as ``x + (q(x) - x).detach()``, the quantizers as chains of
out-of-place ops, the Hadamard transform as a dense matmul (blocks up to 256) or a stack-based
butterfly, LSQ's backward rebuilding its masks from ``v / s``, the adaptive quantizer through
autograd. Same formulas, same results (to float rounding): what a benchmark "before" means.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.quant import AdaptiveBitLinear, BitLinear, HBitLinear
from trainables.quant.hadamard import hadamard_matrix
from trainables.quant.lsq import MIN_STEP, LSQLinear, LSQQuantizer

OLD_DENSE_MAX = 256


def ste(x: Tensor, x_quantized: Tensor) -> Tensor:
    """``x + (q - x).detach()``: the value of ``q``, the gradient of ``x``."""
    return x + (x_quantized - x).detach()


def blend(x: Tensor, x_quantized: Tensor, lam: float) -> Tensor:
    """``x + lam * (q - x).detach()`` (Hugging Face, "Fine-tuning LLMs to 1.58bit")."""
    if lam == 0.0:
        return x
    if lam == 1.0:
        return ste(x, x_quantized)
    return x + lam * (x_quantized - x).detach()


def ternary_values(w: Tensor, eps: float) -> Tensor:
    """``clip(round(W / (mean|W| + eps)), -1, 1) * mean|W|`` (BitNet b1.58), no gradient."""
    with torch.no_grad():
        gamma = w.abs().mean()
        return torch.clamp(torch.round(w / (gamma + eps)), -1, 1) * gamma


def activation_values(x: Tensor, bits: int, eps: float) -> Tensor:
    """Per-token absmax ``clip(round(x s), -Q_P - 1, Q_P) / s``, ``s = Q_P / max|x|``."""
    q_max = 2 ** (bits - 1) - 1
    with torch.no_grad():
        scale = q_max / x.abs().amax(dim=-1, keepdim=True).clamp_min(eps)
        return torch.clamp(torch.round(x * scale), -q_max - 1, q_max) / scale


def fwht_stack(x: Tensor, block: int) -> Tensor:
    """The butterfly Walsh–Hadamard transform with ``torch.stack`` per level (autograd through)."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    y = x.reshape(*lead, n // block, block)
    h = 1
    while h < block:
        y = y.reshape(*lead, n // block, block // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return y.reshape(x.shape) * (1.0 / math.sqrt(block))


class RefBitLinear(BitLinear):
    """BitLinear with the plain STE formulation."""

    def forward(self, x: Tensor) -> Tensor:
        x = self.transform_input(x)
        lam = self.effective_lambda()
        if lam == 0.0:
            return F.linear(x, self.weight, self.bias)
        w = blend(self.weight, ternary_values(self.weight, self.eps), lam)
        if self.act_bits is not None:
            x = blend(x, activation_values(x, self.act_bits, self.eps), lam)
        return F.linear(x, w, self.bias)


class RefHBitLinear(HBitLinear):
    """HBitLinear with the plain STE formulation and the old Hadamard paths."""

    forward = RefBitLinear.forward

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        dense = hadamard_matrix(self.block_size) if self.block_size <= OLD_DENSE_MAX else None
        self.register_buffer("dense_hadamard", dense, persistent=False)

    def transform_input(self, x: Tensor) -> Tensor:
        """Dense matmul for blocks up to 256, the stack butterfly above."""
        if self.norm is not None:
            x = self.norm(x)
        if self.dense_hadamard is None:
            return fwht_stack(x, self.block_size)
        n = x.shape[-1]
        y = x.reshape(*x.shape[:-1], n // self.block_size, self.block_size) @ self.dense_hadamard
        return y.reshape(x.shape)


class _RefLSQFunction(torch.autograd.Function):
    """LSQ (Esser et al., ICLR 2020) saving ``v / s`` and rebuilding the masks in backward."""

    @staticmethod
    def forward(ctx: Any, v: Tensor, step: Tensor, q_n: int, q_p: int, g: float) -> Tensor:
        s = step.clamp_min(MIN_STEP)
        v_s = v / s
        ctx.save_for_backward(v_s, step)
        ctx.q_n, ctx.q_p, ctx.g, ctx.v_dtype = q_n, q_p, g, v.dtype
        return (torch.clamp(v_s, -q_n, q_p).round() * s).to(v.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        v_s, step = ctx.saved_tensors
        below, above = v_s <= -ctx.q_n, v_s >= ctx.q_p
        grad_v = grad_s = None
        if ctx.needs_input_grad[0]:
            grad_v = (grad * ~(below | above)).to(ctx.v_dtype)
        if ctx.needs_input_grad[1]:
            inside = torch.clamp(v_s, -ctx.q_n, ctx.q_p).round() - v_s
            d_step = torch.where(below, -float(ctx.q_n), torch.where(above, float(ctx.q_p), inside))
            grad_s = ((grad.to(d_step.dtype) * d_step).sum() * ctx.g).reshape(step.shape)
        return grad_v, grad_s, None, None, None


def _ref_lsq(quantizer: LSQQuantizer, v: Tensor, lam: float) -> Tensor:
    if lam == 0.0:
        return v
    if not quantizer.is_initialized:
        quantizer.initialize(v)
    q_n, q_p = quantizer.q_range
    v_q = _RefLSQFunction.apply(v, quantizer.step, q_n, q_p, quantizer.grad_scale(v))
    return v_q if lam == 1.0 else v + lam * (v_q - v)


class RefLSQLinear(LSQLinear):
    """LSQLinear with the plain LSQ autograd function."""

    def forward(self, x: Tensor) -> Tensor:
        lam = self.effective_lambda()
        if lam == 0.0:
            return F.linear(x, self.weight, self.bias)
        if self.act_quantizer is not None:
            x = _ref_lsq(self.act_quantizer, x, lam)
        return F.linear(x, _ref_lsq(self.weight_quantizer, self.weight, lam), self.bias)


def absmax_fake_quantize_autograd(
    v: Tensor, bits: Tensor, *, dim: int | None = None, eps: float = 1e-5
) -> Tensor:
    """Absmax fake quantization at bit-width ``b`` with every gradient left to autograd."""
    q_p = torch.pow(2.0, bits.float() - 1.0) - 1.0
    amax = v.detach().abs()
    amax = amax.amax(dim=dim, keepdim=True) if dim is not None else amax.max()
    scale = amax.float().clamp_min(eps) / q_p
    v_s = v / scale
    codes = torch.clamp(v_s.detach().round(), -q_p.detach() - 1.0, q_p.detach())
    return ((v_s + (codes - v_s).detach()) * scale).to(v.dtype)


class RefAdaptiveBitLinear(AdaptiveBitLinear):
    """AdaptiveBitLinear with the quantizer's gradients left to autograd."""

    def forward(self, x: Tensor) -> Tensor:
        lam = self.effective_lambda()
        if lam == 0.0:
            return F.linear(x, self.weight, self.bias)
        bits = self.sampled_bits() if self.training else self.rounded_bits()
        w = self.weight
        w = w + lam * (absmax_fake_quantize_autograd(w, bits, eps=self.eps) - w)
        if self.quantize_input:
            x = x + lam * (absmax_fake_quantize_autograd(x, bits, dim=-1, eps=self.eps) - x)
        return F.linear(x, w, self.bias)
