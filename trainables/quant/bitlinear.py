"""BitLinear (BitNet b1.58) and H-BitLinear (BitNet v2) as ``nn.Linear`` drop-ins.

BitLinear: absmean ternary weights and 8-bit per-token absmax activations (arXiv 2402.17764), with
an optional RMSNorm on the input. H-BitLinear (arXiv 2504.18415) applies a normalized Hadamard
transform to the activations before quantizing them and stores its weights transformed to match
(``W' = W H``), so with quantization off it computes exactly what the original Linear did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import QuantLayer
from .hadamard import DENSE_MAX, fwht, hadamard_block_size, hadamard_matrix, hadamard_transform
from .packing import packed_length
from .quantizers import (
    DEFAULT_EPS,
    activation_quantize_values,
    blend,
    ternary_dequantize,
    ternary_quantize,
)


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

    @classmethod
    def from_linear(cls, linear: nn.Linear, **options: object) -> BitLinear:
        """A layer of this class holding ``linear``'s weights (copied) and bias."""
        w = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=w.device,
            dtype=w.dtype,
            **options,  # type: ignore[arg-type]
        )
        with torch.no_grad():
            layer.weight.copy_(layer._weight_to_storage(w.detach()))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
        layer.train(linear.training)
        return layer

    def _weight_to_storage(self, w: Tensor) -> Tensor:
        return w

    def _weight_from_storage(self, w: Tensor) -> Tensor:
        return w

    def transform_input(self, x: Tensor) -> Tensor:
        """Input normalization (and, in subclasses, the Hadamard transform) before quantization."""
        return self.norm(x) if self.norm is not None else x

    def forward(self, x: Tensor) -> Tensor:  # x: [..., in] -> [..., out]
        x = self.transform_input(x)
        lam = self.effective_lambda()
        if lam == 0.0:
            return F.linear(x, self.weight, self.bias)
        if self.record_quant_error:
            self.recorded_quant_error = self.quantization_error()
        with torch.no_grad():
            w_q = ternary_dequantize(self.weight, self.eps)  # [out, in]
        w = blend(self.weight, w_q, lam)
        if self.act_bits is not None:
            x = blend(x, activation_quantize_values(x, self.act_bits, self.eps), lam)
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

    The stored weight is ``W H`` (rows transformed), so ``F.linear(H x, W H) == F.linear(x, W)``
    when quantization is off. ``block_size`` caps the Hadamard block; by default it is the largest
    power of two dividing ``in_features`` (at least 8, else a ValueError names the size).
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
        dense = hadamard_matrix(self.block_size) if self.block_size <= DENSE_MAX else None
        self.register_buffer("hadamard", dense, persistent=False)

    def _weight_to_storage(self, w: Tensor) -> Tensor:
        return fwht(w, self.block_size)  # rows of W times H (H symmetric)

    def _weight_from_storage(self, w: Tensor) -> Tensor:
        return fwht(w, self.block_size)  # H is its own inverse

    def transform_input(self, x: Tensor) -> Tensor:
        return hadamard_transform(super().transform_input(x), self.block_size, self.hadamard)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hadamard_block={self.block_size}"


class TernaryLinear(nn.Module):
    """Deployable ternary linear layer: int8 codes in {-1, 0, 1} and one float scale.

    Computes what a BitLinear / HBitLinear computes in evaluation at lam = 1, from a quarter of the
    float weights' memory (the codes can be packed further for storage, see ``packing``).
    """

    def __init__(
        self,
        codes: Tensor,
        scale: Tensor,
        bias: Tensor | None,
        *,
        act_bits: int | None,
        eps: float = DEFAULT_EPS,
        norm: nn.Module | None = None,
        hadamard_block: int | None = None,
    ) -> None:
        super().__init__()
        if codes.dtype != torch.int8 or codes.dim() != 2:
            raise ValueError(
                f"codes must be a 2-D int8 tensor, got {codes.dtype} {tuple(codes.shape)}"
            )
        self.out_features, self.in_features = codes.shape
        self.register_buffer("codes", codes.contiguous())  # [out, in] int8
        self.register_buffer("scale", scale.detach().float().reshape(()))  # []
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.act_bits = act_bits
        self.eps = eps
        self.norm = norm
        self.hadamard_block = hadamard_block
        dense = None
        if hadamard_block is not None and hadamard_block <= DENSE_MAX:
            dense = hadamard_matrix(hadamard_block)
        self.register_buffer("hadamard", dense, persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # x: [..., in] -> [..., out]
        if self.norm is not None:
            x = self.norm(x)
        if self.hadamard_block is not None:
            x = hadamard_transform(x, self.hadamard_block, self.hadamard)
        if self.act_bits is not None:
            x = activation_quantize_values(x, self.act_bits, self.eps)
        weight = self.codes.to(x.dtype) * self.scale.to(x.dtype)  # [out, in]
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"act_bits={self.act_bits}, hadamard_block={self.hadamard_block}"
        )
