"""LSQ's quantizer as functions (Esser et al., "Learned Step Size Quantization", arXiv
1902.08153): the integer range, the step's initialization and gradient scale, and the
straight-through round with the paper's step gradient. :mod:`.lsq` builds the layers on them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .bounds import check_bits

# Keeps s > 0: the paper leaves s unconstrained, but s <= 0 would divide by zero.
MIN_STEP = 1e-8
# Step of an all-zero tensor (e.g. a zero-initialized projection), where 2*mean|v|/sqrt(Q_P) is 0.
ZERO_TENSOR_STEP = 1e-3


def lsq_range(bits: int, signed: bool) -> tuple[int, int]:
    """``(Q_N, Q_P)`` of b-bit LSQ (Esser et al. 2020): signed ``(2^(b-1), 2^(b-1)-1)``,
    unsigned ``(0, 2^b - 1)``. The codes are the integers ``-Q_N..Q_P``."""
    check_bits(bits)
    return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def lsq_grad_scale(num_elements: int, q_p: int) -> float:
    """The step-size gradient scale ``g = 1 / sqrt(N * Q_P)`` (Esser et al. 2020, Sec. 2.2)."""
    return 1.0 / math.sqrt(max(num_elements, 1) * q_p)


def lsq_init_step(v: Tensor, q_p: int) -> float:
    """LSQ's initial step ``2 * mean(|v|) / sqrt(Q_P)`` (Esser et al. 2020, Sec. 2.1).

    An all-zero tensor gets ``ZERO_TENSOR_STEP`` instead of 0 (which would divide by zero).
    """
    step = 2.0 * v.detach().abs().float().mean().item() / math.sqrt(q_p)
    if not math.isfinite(step):
        raise ValueError("cannot initialize an LSQ step from a tensor with non-finite values")
    return step if step > 0 else ZERO_TENSOR_STEP


def lsq_quantize_values(v: Tensor, step: Tensor, q_n: int, q_p: int) -> Tensor:
    """``round(clip(v / s, -Q_N, Q_P)) * s`` with no gradient, in ``v``'s dtype.

    The single computation shared by training and by the deployed layers, so both agree exactly.
    """
    with torch.no_grad():
        s = step.detach().clamp_min(MIN_STEP)
        return (torch.clamp(v / s, -q_n, q_p).round() * s).to(v.dtype)


class _LSQFunction(torch.autograd.Function):
    """LSQ fake quantization with the paper's gradients (Esser et al. 2020, Eq. 3 and 5).

    Forward keeps what backward needs instead of ``v / s``: ``d v_q / d s`` itself when the step
    learns (and the in-range mask when it cannot be read back from it), so backward is two
    products and one sum instead of a dozen passes that rebuild masks. Written for the CPU, where
    each new full-size tensor costs page faults and comparisons into bool tensors, bool-to-float
    products and ``torch.where`` run 4x to 30x slower than float arithmetic: four new tensors in
    forward, one in backward, masks as float 1.0 / 0.0. The values are those of the formula
    computed by the same operations, so they are the same bits.
    """

    @staticmethod
    def forward(ctx: Any, v: Tensor, step: Tensor, q_n: int, q_p: int, g: float) -> Tensor:
        s = step.clamp_min(MIN_STEP)
        # clip(v / s) in place: v / s itself is not needed again (promoted to the step's dtype)
        clipped = torch.div(v, s).clamp_(-q_n, q_p)
        codes = torch.round(clipped)
        out = (codes * s).to(v.dtype)
        need_v, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        inside = d_step = None
        if need_v or need_s:
            # v/s <= -Q_N exactly where the clip is -Q_N (v/s >= Q_P where it is Q_P); NaN is in
            # neither, so it counts inside, as it did
            below = torch.eq(clipped, -q_n, out=torch.empty_like(clipped))
            if need_s:
                # d v_q / d s: round(v/s) - v/s inside (where the clip is v/s), the code outside
                # (-Q_N below, Q_P above): (codes - clip) + Q_P [above] - Q_N [below], exactly
                d_step = codes.sub_(clipped)
                above = torch.eq(clipped, q_p, out=clipped)
                d_step.add_(above, alpha=q_p).add_(below, alpha=-q_n)
            else:
                above = torch.eq(clipped, q_p, out=clipped)
            if need_v and not (need_s and q_n > 0):
                inside = below.add_(above).neg_().add_(1.0)  # 1 inside, 0 outside
            # else (signed grid with d kept): |d| <= 1/2 inside and |d| >= 1 outside, so
            # backward reads the mask back from d and only d is kept (the memory of v / s)
        ctx.save_for_backward(inside, d_step, step)
        ctx.g, ctx.v_dtype = g, v.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        inside, d_step, step = ctx.saved_tensors
        grad_v = grad_s = buffer = None
        if ctx.needs_input_grad[1]:
            buffer = grad.to(d_step.dtype) * d_step
            grad_s = (buffer.sum() * ctx.g).reshape(step.shape)
        if ctx.needs_input_grad[0]:
            if inside is None:  # mask = 1 - [|d| > 1/2] (NaN stays inside), in the buffer
                buffer = torch.abs(d_step, out=buffer)
                inside = torch.gt(buffer, 0.5, out=buffer).neg_().add_(1.0)
                grad_v = inside.mul_(grad)
            else:
                grad_v = grad * inside
            grad_v = grad_v.to(ctx.v_dtype)
        return grad_v, grad_s, None, None, None


def lsq_quantize(v: Tensor, step: Tensor, q_n: int, q_p: int, grad_scale: float) -> Tensor:
    """LSQ fake quantization ``round(clip(v/s, -Q_N, Q_P)) * s`` (Esser et al., ICLR 2020).

    Args:
        v: values of any shape.
        step: the 0-d step size ``s`` (kept above ``MIN_STEP``).
        q_n, q_p: the code range, see :func:`lsq_range`.
        grad_scale: ``g`` multiplying the step's gradient, see :func:`lsq_grad_scale`.

    Returns:
        A tensor of ``v``'s shape and dtype on the grid ``s * {-Q_N, ..., Q_P}``; gradient to ``v``
        straight through inside the range (0 outside) and the paper's gradient to ``s``.
    """
    return _LSQFunction.apply(v, step, q_n, q_p, grad_scale)
