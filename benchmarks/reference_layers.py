"""Reference formulas of the quantized core: the one copy the equivalence tests and benchmarks use.

Each function is the plain autograd formulation of its paper's formula, written for clarity, not
speed: BitNet b1.58's absmean (weights) and per-token absmax (activations) quantizers with the
``x + (q - x).detach()`` straight-through estimator (Ma et al., 2024), the lambda blend
(Hugging Face, "Fine-tuning LLMs to 1.58bit"), LSQ's step-size gradient (Esser et al., ICLR 2020),
the adaptive bit-width's gradient through the absmax scale (seed 000), the Walsh–Hadamard
butterfly (seed 001) and the ternary packing formulas.

The ``*_reference(layer, x, lam, keep=...)`` functions compute what a layer computes from those
formulas, reading the layer's parameters; ``keep`` (a dict) receives the intermediate quantized
tensors so a test can read their gradients.

The ``Ref*`` classes subclass the optimized layers and override only ``forward`` with these
references: they are the "before" rows of ``benchmarks.bench_quant_layers`` (the formulation the
quantized core had before benchmark 1, commit 5eb0b09: the dense Hadamard matmul for blocks up to
256 and the stack butterfly above, LSQ's backward rebuilding its masks from ``v / s``).
``tests/test_quant_equivalence.py`` checks the optimized layers against the formulas and the
``Ref*`` layers against the optimized ones, so "before" and "after" compute the same function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.quant import AdaptiveBitLinear, BitLinear, HBitLinear
from trainables.quant.hadamard import hadamard_matrix, hadamard_transform
from trainables.quant.lsq import MIN_STEP, LSQLinear, LSQQuantizer

EPS = 1e-5  # the layers' default eps
OLD_DENSE_MAX = 256  # the old Hadamard path: a dense matmul up to this block, a butterfly above

# An LSQ fake quantizer ``(v, step, Q_N, Q_P, g) -> q(v)`` with LSQ's gradients.
LSQFunction = Callable[[Tensor, Tensor, int, int, float], Tensor]


# ---------------------------------------------------------------- quantizers
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


def ternary_values(w: Tensor, eps: float = EPS) -> Tensor:
    """``clip(round(W / (mean|W| + eps)), -1, 1) * mean|W|`` (BitNet b1.58), no gradient."""
    with torch.no_grad():
        gamma = w.abs().mean()
        return torch.clamp(torch.round(w / (gamma + eps)), -1, 1) * gamma


def activation_values(x: Tensor, bits: int, eps: float = EPS) -> Tensor:
    """Per-token absmax ``clip(round(x s), -Q_P - 1, Q_P) / s``, ``s = Q_P / max|x|``, no grad."""
    q_max = 2 ** (bits - 1) - 1
    with torch.no_grad():
        scale = q_max / x.abs().amax(dim=-1, keepdim=True).clamp_min(eps)  # [..., 1]
        return torch.clamp(torch.round(x * scale), -q_max - 1, q_max) / scale


def lsq_roundpass(v: Tensor, step: Tensor, q_n: int, q_p: int, g: float) -> Tensor:
    """LSQ (Esser et al., ICLR 2020) as the paper's ``gradscale`` / ``roundpass`` pseudo-code.

    The range is strict (``-Q_N < v/s < Q_P`` passes the gradient), as the layer documents.
    """
    s = step.clamp_min(MIN_STEP)
    s = (s - s * g).detach() + s * g  # value s, gradient scaled by g
    v_s = v / s
    inside = (v_s.detach() > -q_n) & (v_s.detach() < q_p)
    v_c = torch.where(inside, v_s, v_s.detach().clamp(-q_n, q_p))
    v_bar = (v_c.round() - v_c).detach() + v_c  # round with a straight-through gradient
    return v_bar * s


class _SavedRatioLSQ(torch.autograd.Function):
    """LSQ saving ``v / s`` and rebuilding the masks in backward (the core before benchmark 1)."""

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


def lsq_saved_ratio(v: Tensor, step: Tensor, q_n: int, q_p: int, g: float) -> Tensor:
    """LSQ with a hand-written backward from the saved ``v / s`` (the same gradients as
    :func:`lsq_roundpass`; the formulation the quantized core had before benchmark 1)."""
    return _SavedRatioLSQ.apply(v, step, q_n, q_p, g)


def lsq_step_contributions(
    v: Tensor, step: Tensor, q_n: int, q_p: int, g: float, grad: Tensor
) -> Tensor:
    """Per-element terms of LSQ's step gradient: ``g * grad * (round(v/s) - v/s | -Q_N | Q_P)``
    (Esser et al., ICLR 2020, eq. 3), in float64; the step's gradient is their sum."""
    v_s = v.detach() / step.detach().clamp_min(MIN_STEP)
    code = torch.clamp(v_s, -q_n, q_p).round()
    d = torch.where(v_s <= -q_n, -float(q_n), torch.where(v_s >= q_p, float(q_p), code - v_s))
    return grad.double() * d.double() * g


def absmax_fake_quantize_autograd(
    v: Tensor, bits: Tensor, *, dim: int | None = None, eps: float = EPS
) -> Tensor:
    """Seed 000's absmax quantizer ``codes * s``, ``s = max|v| / (2^(b-1) - 1)``, every gradient
    (to ``v`` and to the bit-width ``b`` through ``s``) left to autograd."""
    q_p = torch.pow(2.0, bits.float() - 1.0) - 1.0
    amax = v.detach().abs()
    amax = amax.amax(dim=dim, keepdim=True) if dim is not None else amax.max()
    scale = amax.float().clamp_min(eps) / q_p
    v_s = v / scale
    codes = torch.clamp(v_s.detach().round(), -q_p.detach() - 1.0, q_p.detach())
    return ((v_s + (codes - v_s).detach()) * scale).to(v.dtype)


def absmax_bits_contributions(
    v: Tensor, bits: float, dim: int | None, grad: Tensor, eps: float = EPS
) -> Tensor:
    """Per-element terms of ``dL/db = sum grad * (codes - v/s) * ds/db`` in float64.

    ``s = A / Q_P`` and ``Q_P = 2^(b-1) - 1``: ``ds/db = -s 2^(b-1) ln 2 / Q_P`` (LSQ's
    ``round(v/s) - v/s`` term, Esser et al., ICLR 2020, through the scale).
    """
    q_p = 2.0 ** (bits - 1.0) - 1.0
    vd = v.detach()
    amax = vd.abs().amax(dim=dim, keepdim=True) if dim is not None else vd.abs().max()
    scale = amax.float().clamp_min(eps) / torch.tensor(q_p)
    v_s = vd / scale  # float32, as the layer rounds it
    codes = torch.clamp(v_s.round(), -q_p - 1.0, q_p)
    ds_db = -scale.double() * 2.0 ** (bits - 1.0) * math.log(2.0) / q_p
    return grad.double() * (codes - v_s).double() * ds_db


def fwht_stack(x: Tensor, block: int) -> Tensor:
    """The butterfly Walsh–Hadamard transform with ``torch.stack`` per level (autograd through),
    orthonormal (``1/sqrt(block)``), on blocks of ``block`` features of the last dimension."""
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


def pack_reference(q: Tensor, scheme: str) -> Tensor:
    """The packing formulas: 2bit ``sum (c_i + 1) << 2i``, base3 ``sum (c_i + 1) 3^i``, padded
    with code 0 (digit 1) to whole bytes of 4 (2bit) or 5 (base3) codes."""
    per = {"2bit": 4, "base3": 5}[scheme]
    flat = q.reshape(-1).long() + 1
    pad = (-flat.numel()) % per
    groups = torch.cat([flat, torch.ones(pad, dtype=torch.long)]).view(-1, per)  # [bytes, per]
    weights = 4 ** torch.arange(per) if scheme == "2bit" else 3 ** torch.arange(per)
    return (groups * weights).sum(1).to(torch.uint8)


# ---------------------------------------------------------------- layers from the formulas
def bitlinear_reference(
    layer: BitLinear,
    x: Tensor,
    lam: float,
    *,
    keep: dict[str, Tensor] | None = None,
    hadamard: Callable[[Tensor, int], Tensor] = hadamard_transform,
) -> Tensor:
    """BitLinear / H-BitLinear from the formulas: (H-BitLinear: the Hadamard transform, then) the
    input norm, then the blended ternary weight and absmax activations (seed 001's order)."""
    if isinstance(layer, HBitLinear):
        x = hadamard(x, layer.block_size)
    if layer.norm is not None:
        x = layer.norm(x)
    if lam == 0.0:
        return F.linear(x, layer.weight, layer.bias)
    w = blend(layer.weight, ternary_values(layer.weight, layer.eps), lam)  # [out, in]
    if layer.act_bits is not None:
        x = blend(x, activation_values(x, layer.act_bits, layer.eps), lam)
    if keep is not None:
        keep["x"], keep["w"] = x, w
    return F.linear(x, w, layer.bias)


def lsq_linear_reference(
    layer: LSQLinear,
    x: Tensor,
    lam: float,
    *,
    keep: dict[str, Tensor] | None = None,
    lsq: LSQFunction = lsq_roundpass,
) -> Tensor:
    """LSQLinear from the formulas: ``v + lam * (q(v) - v)`` on input and weight (a quantizer not
    yet initialized is initialized from ``v``, as the layer does)."""
    if lam == 0.0:
        return F.linear(x, layer.weight, layer.bias)

    def quant(quantizer: LSQQuantizer, v: Tensor, name: str) -> Tensor:
        if not quantizer.is_initialized:
            quantizer.initialize(v)
        q_n, q_p = quantizer.q_range
        v_q = lsq(v, quantizer.step, q_n, q_p, quantizer.grad_scale(v))
        out = v_q if lam == 1.0 else v + lam * (v_q - v)
        if keep is not None:
            if out.requires_grad:
                out.retain_grad()
            keep[name] = out
        return out

    if layer.act_quantizer is not None:
        x = quant(layer.act_quantizer, x, "x")
    return F.linear(x, quant(layer.weight_quantizer, layer.weight, "w"), layer.bias)


def adaptive_reference(
    layer: AdaptiveBitLinear, x: Tensor, lam: float, *, keep: dict[str, Tensor] | None = None
) -> Tensor:
    """AdaptiveBitLinear from the formulas (stochastic bits in training: the caller seeds the RNG
    to compare with the layer). ``keep`` gets ``bits`` and the quantized ``w`` (and ``x``)."""
    if lam == 0.0:
        return F.linear(x, layer.weight, layer.bias)
    bits = layer.sampled_bits() if layer.training else layer.rounded_bits()  # 0-d
    w_q = absmax_fake_quantize_autograd(layer.weight, bits, eps=layer.eps)  # [out, in]
    if keep is not None:
        keep["bits"] = bits.detach()
        if w_q.requires_grad:
            w_q.retain_grad()
        keep["w"] = w_q
    w = layer.weight + lam * (w_q - layer.weight)
    if layer.quantize_input:
        x_q = absmax_fake_quantize_autograd(x, bits, dim=-1, eps=layer.eps)  # [..., in]
        if keep is not None:
            if x_q.requires_grad:
                x_q.retain_grad()
            keep["x"] = x_q
        x = x + lam * (x_q - x)
    return F.linear(x, w, layer.bias)


# ---------------------------------------------------------------- the benchmarks' "before" layers
class RefBitLinear(BitLinear):
    """BitLinear with the plain STE formulation."""

    def forward(self, x: Tensor) -> Tensor:
        return bitlinear_reference(self, x, self.effective_lambda())


class RefHBitLinear(HBitLinear):
    """HBitLinear with the plain STE formulation and the old Hadamard paths."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        dense = hadamard_matrix(self.block_size) if self.block_size <= OLD_DENSE_MAX else None
        self.register_buffer("dense_hadamard", dense, persistent=False)

    def old_hadamard(self, x: Tensor, block: int) -> Tensor:
        """Dense matmul for blocks up to 256, the stack butterfly above."""
        if self.dense_hadamard is None:
            return fwht_stack(x, block)
        n = x.shape[-1]
        y = x.reshape(*x.shape[:-1], n // block, block) @ self.dense_hadamard
        return y.reshape(x.shape)

    def forward(self, x: Tensor) -> Tensor:
        return bitlinear_reference(self, x, self.effective_lambda(), hadamard=self.old_hadamard)


class RefLSQLinear(LSQLinear):
    """LSQLinear with the plain LSQ autograd function."""

    def forward(self, x: Tensor) -> Tensor:
        return lsq_linear_reference(self, x, self.effective_lambda(), lsq=lsq_saved_ratio)


class RefAdaptiveBitLinear(AdaptiveBitLinear):
    """AdaptiveBitLinear with the quantizer's gradients left to autograd."""

    def forward(self, x: Tensor) -> Tensor:
        return adaptive_reference(self, x, self.effective_lambda())


REFERENCE_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    BitLinear: RefBitLinear,
    HBitLinear: RefHBitLinear,
    LSQLinear: RefLSQLinear,
    AdaptiveBitLinear: RefAdaptiveBitLinear,
}
