"""BitLinear (BitNet b1.58) and H-BitLinear (BitNet v2) as ``nn.Linear`` drop-ins.

BitLinear: absmean ternary weights and 8-bit per-token absmax activations (arXiv 2402.17764), with
an optional RMSNorm on the input. H-BitLinear (arXiv 2504.18415; seed 001's "Hadamard transform +
LayerNorm + quantization") applies a normalized Hadamard transform to the activations, then the
optional norm, then the quantizer, and stores its weights transformed to match (``W' = W H``), so
with quantization off (and the norm's gain at its initial ones) it computes exactly what the
original Linear did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import QuantLayer
from .hadamard import fwht, hadamard_block_size, hadamard_matrix, hadamard_transform
from .packing import packed_length
from .quantizers import (
    DEFAULT_EPS,
    activation_quantize_values,
    blend_activation,
    blend_ternary,
    ternary_dequantize,
    ternary_dequantize_values,
    ternary_quantize,
)

if TYPE_CHECKING:
    from .ternary_linear import TernaryLinear


class BitLinear(QuantLayer, nn.Linear):
    """Linear layer with ternary weights and ``act_bits``-bit activations, blended by lam.

    Args:
        act_bits: activation bits (per-token absmax); ``None`` keeps activations in full precision.
        input_norm: apply an RMSNorm (learnable gain) to the input first, as BitNet's BitLinear
            does.
        eps: guards the absmean and absmax scales.
    """

    scheme_name = "ternary"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        act_bits: int | None = 8,
        input_norm: bool = False,
        eps: float = DEFAULT_EPS,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if act_bits is not None and not 2 <= act_bits <= 16:
            raise ValueError(f"act_bits must be in 2..16 or None, got {act_bits}")
        self.act_bits = act_bits
        self.eps = eps
        self.quant_lambda = 1.0
        self.eval_lambda = 1.0
        self.norm = nn.RMSNorm(in_features, device=device, dtype=dtype) if input_norm else None

    def _weight_to_storage(self, w: Tensor) -> Tensor:
        return w

    def _weight_from_storage(self, w: Tensor) -> Tensor:
        return w

    def transform_input(self, x: Tensor) -> Tensor:
        """What precedes the quantizer: the input norm (H-BitLinear: the Hadamard transform, then
        the norm)."""
        return self.norm(x) if self.norm is not None else x

    def input_block(self) -> int | None:
        """The Hadamard block applied to the input (None: no transform)."""
        return None

    def forward(self, x: Tensor) -> Tensor:  # x: [..., in] -> [..., out]
        lam = self.effective_lambda()
        # the fused node at lam = 1 (under autocast, the generic path, whose ops autocast casts)
        fused = type(self).transform_input in _FUSED_TRANSFORMS
        if lam == 1.0 and fused and not torch.is_autocast_enabled(x.device.type):
            if self.record_quant_error:
                self.recorded_quant_error = self.quantization_error()
            block = self.input_block()
            if self.norm is not None:
                # the norm sits between the Hadamard transform and the quantizer: the fused node
                # then only quantizes (autograd differentiates the transform and the norm)
                x, block = self.transform_input(x), None
            return _QuantLinear.apply(x, self.weight, self.bias, block, self.act_bits, self.eps)
        x = self.transform_input(x)
        if lam == 0.0:
            return F.linear(x, self.weight, self.bias)
        if self.record_quant_error:
            self.recorded_quant_error = self.quantization_error()
        w = blend_ternary(self.weight, lam, self.eps)  # [out, in]
        if self.act_bits is not None:
            x = blend_activation(x, lam, self.act_bits, self.eps)
        return F.linear(x, w, self.bias)

    def quantization_error(self) -> Tensor:
        """``mean((W - W_q)^2)`` with gradient to ``W`` (the ``lambda_q`` term of BitSkip)."""
        return (self.weight - ternary_dequantize(self.weight, self.eps)).pow(2).mean()

    def storage_bits(self) -> int:
        """Bits a packed checkpoint stores for the weight: base-3 codes (1.6 bits) + the scale."""
        return 8 * packed_length(self.weight.numel(), "base3") + 32

    def to_float(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing what this layer does at lam = 0 (without input_norm)."""
        w = self.weight
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self._weight_from_storage(w.detach()))
            if self.bias is not None:
                linear.bias.copy_(self.bias.detach())
        return linear

    to_linear = to_float

    def to_deployed(self) -> TernaryLinear:
        from .ternary_linear import TernaryLinear

        """The inference form: int8 ternary codes and one scale instead of float weights."""
        codes, scale = ternary_quantize(self.weight.detach(), self.eps)
        return TernaryLinear(
            codes,
            scale,
            None if self.bias is None else self.bias.detach().clone(),
            act_bits=self.act_bits,
            eps=self.eps,
            norm=self.norm,
            hadamard_block=getattr(self, "block_size", None),
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, act_bits={self.act_bits}, lam={self.quant_lambda:g}"


class HBitLinear(BitLinear):
    """BitLinear preceded by a normalized (block-diagonal) Hadamard transform of its input.

    The order is seed 001's (BitSkip's H-BitLinear, BitNet v2): Hadamard transform, then the
    input norm (with ``input_norm``: an RMSNorm whose statistics and gain act on the transformed
    activations), then the activation quantizer. The stored weight is ``W H`` (rows transformed),
    so ``F.linear(H x, W H) == F.linear(x, W)`` when quantization is off (an RMSNorm's root mean
    square is the same before and after the orthonormal transform, so at its initial unit gain
    the norm commutes with it). ``block_size`` caps the Hadamard block; by default it is the
    largest power of two dividing ``in_features`` (at least 8, else a ValueError names the size).
    """

    scheme_name = "hadamard"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        block_size: int | None = None,
        act_bits: int | None = 8,
        input_norm: bool = False,
        eps: float = DEFAULT_EPS,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.block_size = hadamard_block_size(in_features, block_size)
        super().__init__(
            in_features,
            out_features,
            bias,
            act_bits=act_bits,
            input_norm=input_norm,
            eps=eps,
            device=device,
            dtype=dtype,
        )

    @property
    def hadamard(self) -> Tensor:
        """The dense normalized ``[block, block]`` Hadamard matrix (for inspection; forward uses
        the factored transform of :func:`~trainables.quant.hadamard.hadamard_transform`)."""
        return hadamard_matrix(self.block_size, self.weight.dtype).to(self.weight.device)

    def _weight_to_storage(self, w: Tensor) -> Tensor:
        return fwht(w, self.block_size)  # rows of W times H (H symmetric)

    def _weight_from_storage(self, w: Tensor) -> Tensor:
        return fwht(w, self.block_size)  # H is its own inverse

    def transform_input(self, x: Tensor) -> Tensor:
        """The Hadamard transform, then the input norm (seed 001's order)."""
        return super().transform_input(hadamard_transform(x, self.block_size))

    def input_block(self) -> int | None:
        """The Hadamard block applied to the input."""
        return self.block_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hadamard_block={self.block_size}"


class _QuantLinear(torch.autograd.Function):
    """A BitLinear / H-BitLinear at lam = 1 as one autograd node (BitNet b1.58, BitNet v2).

    Forward: ``F.linear(Q_a(H x), Q_w(W), b)`` with ``H`` the (block) Hadamard transform or the
    identity, ``Q_a`` the per-token absmax activation quantizer and ``Q_w`` the absmean ternary
    one. Backward is the straight-through estimator written out: ``dL/dW = g^T Q_a(H x)``,
    ``dL/db = sum g`` and ``dL/dx = H^T (g Q_w(W)) = g (Q_w(W) H)`` (``H`` symmetric): the
    transform is applied to the ``[out, in]`` weight instead of the ``[tokens, in]`` gradient,
    which is cheaper whenever there are more tokens than output features. Same gradients as
    ``x + (q - x).detach()`` through ``F.linear``, to float rounding.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        block: int | None,
        act_bits: int | None,
        eps: float,
    ) -> Tensor:
        if block is not None:
            x = hadamard_transform(x, block)
        if act_bits is not None:
            x = activation_quantize_values(x, act_bits, eps)
        w_q = ternary_dequantize_values(weight, eps)  # [out, in]
        ctx.save_for_backward(x, w_q)
        ctx.block = block
        return F.linear(x, w_q, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x_q, w_q = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_2d = grad.reshape(-1, grad.shape[-1])  # [tokens, out]
        grad_x = grad_w = grad_b = None
        if need_x:
            w_eff = w_q if ctx.block is None else hadamard_transform(w_q, ctx.block)
            grad_x = (grad_2d @ w_eff).reshape(x_q.shape)
        if need_w:
            grad_w = grad_2d.t() @ x_q.reshape(-1, x_q.shape[-1])
        if need_b:
            grad_b = grad_2d.sum(0)
        return grad_x, grad_w, grad_b, None, None, None


_FUSED_TRANSFORMS = (BitLinear.transform_input, HBitLinear.transform_input)
