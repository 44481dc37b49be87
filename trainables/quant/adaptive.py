"""AdaptiveBitLinear: a linear layer with a learnable real bit-width (seed 000, bit-balanced).

The bit-width ``b`` is a real parameter, clamped to ``[min_bits, max_bits]``, rounded stochastically
in training (``floor(b) + Bernoulli(b - floor(b))``, unbiased) and to the nearest integer in
evaluation, with a straight-through estimator (the rounding passes the gradient unchanged), as
in Brevitas' ``BitWidthParameter`` and seed 000. The weights (and optionally the input) are
fake-quantized at ``b`` bits, symmetric, with an absmax scale ``max|v| / (2^(b-1) - 1)`` (per
tensor for weights, per token for activations; seed 000). The scale depends on ``b``, so the task
loss also has a gradient with respect to the bit-width: the LSQ-style ``round(v/s) - v/s`` term
(Esser et al., ICLR 2020) through ``s(b)``.

``bit_usage()`` = rounded bits x stored parameters (weight and bias, as seed 000 counts them),
differentiable with respect to the bit-width (straight-through), so a penalty on it
(``BitBalancedCrossEntropy``) lowers the bits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import QuantLayer
from .bounds import DEFAULT_EPS, MAX_BITS, MIN_BITS, check_bit_range, check_bits


class _ClampInward(torch.autograd.Function):
    """``clamp(x, lo, hi)`` whose gradient is blocked only where descent would push ``x`` further
    out: a bit-width driven below ``min_bits`` by the penalty can still be pulled back up by the
    task loss, instead of sitting at zero gradient forever (a plain clamp's fate)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lo: float, hi: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        outward = ((x < ctx.lo) & (grad > 0)) | ((x > ctx.hi) & (grad < 0))
        return torch.where(outward, torch.zeros_like(grad), grad), None, None


def absmax_fake_quantize(
    v: Tensor, bits: Tensor, *, dim: int | None = None, eps: float = DEFAULT_EPS
) -> Tensor:
    """Symmetric absmax fake quantization at a (tensor) bit-width ``b`` (seed 000).

    ``s = max|v| / (2^(b-1) - 1)`` over ``dim`` (the whole tensor when None), codes
    ``clip(round(v/s), -2^(b-1), 2^(b-1) - 1)``, value ``codes * s``. Gradient: straight through to
    ``v``; to ``b`` through ``s`` as LSQ's ``round(v/s) - v/s`` (Esser et al., ICLR 2020).

    Args:
        v: values of any shape.
        bits: 0-d integer-valued tensor (possibly carrying a straight-through gradient).
        dim: reduce the scale over this dimension (kept), e.g. -1 for one scale per token.
    """
    return _AbsmaxQuantize.apply(v, bits, dim, eps)


class _AbsmaxQuantize(torch.autograd.Function):
    """:func:`absmax_fake_quantize` with its gradients written out.

    The autograd graph of ``(v/s + (codes - v/s).detach()) * s`` costs five full-size temporaries
    and, for the bit-width, sums two large terms that nearly cancel; here forward keeps
    ``codes - v/s`` and backward sums ``grad * (codes - v/s)`` directly:
    ``dL/ds = sum(grad * (codes - v/s))`` (LSQ, Esser et al. 2020), ``s = A / Q_P`` with
    ``A = max(max|v|, eps)`` gives ``dL/dQ_P = -sum(dL/ds * s) / Q_P`` and ``Q_P = 2^(b-1) - 1``
    gives ``dQ_P/db = 2^(b-1) ln 2``. The gradient to ``v`` is the incoming one (straight through).
    """

    @staticmethod
    def forward(ctx: Any, v: Tensor, bits: Tensor, dim: int | None, eps: float) -> Tensor:
        q_p = torch.pow(2.0, bits.float() - 1.0) - 1.0  # []
        # max |v| as the larger of max(v) and -min(v): exact, and no |v| temporary
        if dim is None:
            amax = torch.maximum(v.max(), v.min().neg())
        else:
            amax = torch.maximum(
                v.amax(dim=dim, keepdim=True), v.amin(dim=dim, keepdim=True).neg_()
            )
        scale = amax.float().clamp_min(eps) / q_p  # [] or v's shape with dim reduced to 1
        v_s = v / scale
        codes = v_s.round()
        if q_p.device.type == "cpu":
            # Python bounds: a CPU clamp with tensor bounds runs ~10x slower than with numbers
            # (reading a CPU scalar costs no device synchronization)
            bound = float(q_p)
            codes.clamp_(-bound - 1.0, bound)
        else:
            codes.clamp_(-q_p - 1.0, q_p)
        d = None
        if ctx.needs_input_grad[1]:
            d = torch.sub(codes, v_s, out=v_s)  # round(v/s) - v/s, in the buffer of v/s
        out = codes.mul_(scale).to(v.dtype)  # codes * s, in the buffer of the codes
        ctx.save_for_backward(d, scale, q_p)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        d, scale, q_p = ctx.saved_tensors
        grad_bits = None
        if ctx.needs_input_grad[1]:
            prod = grad.to(d.dtype) * d
            g_scale = prod.sum(ctx.dim, keepdim=True) if ctx.dim is not None else prod.sum()
            g_qp = -(g_scale * scale).sum() / q_p
            grad_bits = g_qp * (q_p + 1.0) * math.log(2.0)
        return (grad if ctx.needs_input_grad[0] else None), grad_bits, None, None


def _blend(v: Tensor, v_q: Tensor, lam: float) -> Tensor:
    # v + lam * (v_q - v), with gradient through both terms; at lam = 1 that is v_q itself
    # (the value up to the rounding of v + (v_q - v)), without two full-size temporaries
    return v_q if lam == 1.0 else v + lam * (v_q - v)


class AdaptiveBitLinear(QuantLayer, nn.Linear):
    """``nn.Linear`` with one learnable real bit-width for its weights (and optionally input).

    Args:
        init_bits: starting bit-width (real, in ``[min_bits, max_bits]``).
        min_bits, max_bits: bounds of the rounded bit-width, within 2..8.
        quantize_input: also fake-quantize the input (per token, absmax) at the same bit-width.
    """

    scheme_name = "adaptive"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        init_bits: float = 8.0,
        min_bits: int = MIN_BITS,
        max_bits: int = MAX_BITS,
        quantize_input: bool = False,
        eps: float = DEFAULT_EPS,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        check_bit_range(init_bits, min_bits, max_bits)
        self.min_bits, self.max_bits = min_bits, max_bits
        self.quantize_input = quantize_input
        self.eps = eps
        self.bit_width = nn.Parameter(torch.tensor(float(init_bits), device=device))  # [] fp32
        self.quant_lambda = 1.0
        self.eval_lambda = 1.0

    def _clamped_bits(self) -> Tensor:
        return _ClampInward.apply(self.bit_width, float(self.min_bits), float(self.max_bits))

    def rounded_bits(self) -> Tensor:
        """The bit-width rounded to the nearest integer (evaluation), straight-through: 0-d."""
        b = self._clamped_bits()
        return b + (b.detach().round() - b.detach())

    def sampled_bits(self) -> Tensor:
        """The bit-width rounded stochastically (training; unbiased), straight-through: 0-d."""
        b = self._clamped_bits()
        low = b.detach().floor()
        up = (torch.rand((), device=b.device) < b.detach() - low).to(b.dtype)
        return b + (low + up - b.detach())

    @property
    def bits(self) -> int:
        """The current evaluation bit-width as an int (for reports; synchronizes a device)."""
        return int(self.rounded_bits().item())

    def bit_usage(self) -> Tensor:
        """Rounded bits x stored parameters (weight + bias), differentiable in the bit-width."""
        numel = self.weight.numel() + (0 if self.bias is None else self.bias.numel())
        return self.rounded_bits() * numel

    def storage_bits(self) -> int:
        """Bits a deployed weight needs: the rounded bit-width per code plus the fp32 scale.

        (``bit_usage()`` is the training penalty and, as seed 000 does, also counts the bias.)
        """
        return self.bits * self.weight.numel() + 32

    def forward(self, x: Tensor) -> Tensor:  # x: [..., in] -> [..., out]
        lam = self.effective_lambda()
        if lam == 0.0:
            return F.linear(x, self.weight, self.bias)
        if self.record_quant_error:  # see losses.record_quant_errors (FSDP2: weights whole here)
            self.recorded_quant_error = self.quantization_error()
        bits = self.sampled_bits() if self.training else self.rounded_bits()
        w = _blend(self.weight, absmax_fake_quantize(self.weight, bits, eps=self.eps), lam)
        if self.quantize_input:
            x = _blend(x, absmax_fake_quantize(x, bits, dim=-1, eps=self.eps), lam)
        return F.linear(x, w, self.bias)

    def quantization_error(self) -> Tensor:
        """``mean((W - W_q)^2)`` at the rounded bit-width, with gradient to ``W``."""
        w_q = absmax_fake_quantize(self.weight, self.rounded_bits().detach(), eps=self.eps)
        return (self.weight - w_q).pow(2).mean()

    def to_float(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the latent weights (what this layer computes at lam = 0)."""
        w = self.weight
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        linear.load_state_dict({k: v for k, v in self.state_dict().items() if k != "bit_width"})
        return linear

    to_linear = to_float

    def to_deployed(self) -> DeployedAdaptiveLinear:
        """Integer codes at the rounded bit-width and one scale; equals evaluation at lam = 1."""
        with torch.no_grad():
            bits = self.rounded_bits().detach()
            q_p = torch.pow(2.0, bits - 1.0) - 1.0
            scale = self.weight.detach().abs().max().float().clamp_min(self.eps) / q_p
            codes = torch.clamp((self.weight / scale).round(), -q_p - 1.0, q_p).to(torch.int8)
        return DeployedAdaptiveLinear(
            codes,
            scale,
            None if self.bias is None else self.bias.detach().clone(),
            bits=int(bits.item()),
            quantize_input=self.quantize_input,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, bits=[{self.min_bits}, {self.max_bits}], "
            f"quantize_input={self.quantize_input}, lam={self.quant_lambda:g}"
        )


class DeployedAdaptiveLinear(nn.Module):
    """Deployed :class:`AdaptiveBitLinear`: int8 codes of ``bits`` bits and one float scale."""

    def __init__(
        self,
        codes: Tensor,
        scale: Tensor,
        bias: Tensor | None,
        *,
        bits: int,
        quantize_input: bool,
        eps: float = DEFAULT_EPS,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.bits = check_bits(bits)
        self.register_buffer("codes", codes.contiguous())  # [out, in] int8
        self.register_buffer("scale", scale.detach().float().reshape(()))  # []
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.quantize_input = quantize_input
        self.eps = eps

    def bit_usage(self) -> Tensor:
        """Bits x stored parameters, as the trained layer reported it (a constant)."""
        numel = self.codes.numel() + (0 if self.bias is None else self.bias.numel())
        return torch.tensor(float(self.bits * numel), device=self.codes.device)

    def forward(self, x: Tensor) -> Tensor:  # x: [..., in] -> [..., out]
        if self.quantize_input:
            bits = torch.tensor(float(self.bits), device=x.device)
            x = absmax_fake_quantize(x, bits, dim=-1, eps=self.eps)
        weight = (self.codes.float() * self.scale).to(x.dtype)  # [out, in]
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"
