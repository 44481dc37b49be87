"""Deployable ternary layers: int8 codes (:class:`TernaryLinear`) or 2-bit packed codes
(:class:`PackedTernaryLinear`) and one float scale, converted from a trained BitLinear /
HBitLinear (arXiv 2402.17764, 2504.18415); split from :mod:`.bitlinear`, the training layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hadamard import hadamard_transform
from .packing import pack_ternary, unpack_ternary
from .quantizers import (
    DEFAULT_EPS,
    activation_codes,
    activation_quantize_values,
)

MatmulMode = Literal["float", "int8"]
CacheMode = Literal["none", "codes", "weight"]
_MATMUL_MODES = ("float", "int8")
_CACHE_MODES = ("none", "codes", "weight")


class TernaryLinear(nn.Module):
    """Deployable ternary linear layer: int8 codes in {-1, 0, 1} and one float scale.

    Computes what a BitLinear / HBitLinear computes in evaluation at lam = 1, from a quarter of the
    float weights' memory (the codes can be packed further, see :class:`PackedTernaryLinear`).

    Args:
        matmul: ``"float"`` (default) dequantizes the weight (``codes * gamma``) and calls
            ``F.linear``: bit for bit what the fake-quantized layer computes in evaluation.
            ``"int8"`` (``act_bits <= 8``, needs ``torch._int_mm``; on CUDA also multiples of 8
            and more than 16 rows) multiplies the activation codes by the ternary codes exactly
            in int32 and scales each output once: ``sum_j (x_j / s)(c_j gamma) =
            (gamma / s) sum_j x_j c_j``. The same value to float rounding, but not the same bits,
            so a later layer's activation quantization may round an element the other way.
        cache: ``"weight"`` keeps the dequantized float weight of the float path after the first
            call (speed of a float layer, memory of one more float weight); ``"codes"`` keeps the
            unpacked int8 codes of a :class:`PackedTernaryLinear`; ``"none"`` (default) keeps
            nothing. A cache is dropped by :meth:`configure` and rebuilt when the codes change.
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
        matmul: MatmulMode = "float",
        cache: CacheMode = "none",
    ) -> None:
        super().__init__()
        if codes.dtype != torch.int8 or codes.dim() != 2:
            raise ValueError(
                f"codes must be a 2-D int8 tensor, got {codes.dtype} {tuple(codes.shape)}"
            )
        self.out_features, self.in_features = codes.shape
        self._init_codes(codes.contiguous())
        self.register_buffer("scale", scale.detach().float().reshape(()))  # []
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.act_bits = act_bits
        self.eps = eps
        self.norm = norm
        self.hadamard_block = hadamard_block
        self.matmul: MatmulMode = "float"
        self.cache: CacheMode = "none"
        self._cached: tuple[tuple[object, ...], Tensor] | None = None
        self.configure(matmul=matmul, cache=cache)

    def _init_codes(self, codes: Tensor) -> None:
        self.register_buffer("codes", codes)  # [out, in] int8

    def configure(
        self, *, matmul: MatmulMode | None = None, cache: CacheMode | None = None
    ) -> None:
        """Change the matmul path and the cache (see the class docstring); drops any cache."""
        if matmul is not None:
            if matmul not in _MATMUL_MODES:
                raise ValueError(f"matmul must be one of {_MATMUL_MODES}, got {matmul!r}")
            if matmul == "int8" and (self.act_bits is None or self.act_bits > 8):
                raise ValueError(
                    f"the int8 matmul needs activations of at most 8 bits, got {self.act_bits}"
                )
            if matmul == "int8" and not hasattr(torch, "_int_mm"):
                raise ValueError("the int8 matmul needs torch._int_mm (PyTorch >= 2.2)")
            self.matmul = matmul
        if cache is not None:
            if cache not in _CACHE_MODES:
                raise ValueError(f"cache must be one of {_CACHE_MODES}, got {cache!r}")
            self.cache = cache
        self._cached = None

    def int_codes(self) -> Tensor:
        """The ``[out, in]`` int8 codes (unpacked, for a packed layer)."""
        return self.codes

    def _codes_version(self) -> tuple[object, ...]:
        # what a cache depends on: a load_state_dict or an in-place edit of the codes bumps the
        # buffer's version counter, a .to() replaces the tensor
        return (self.codes.data_ptr(), self.codes._version, self.codes.device)

    def _cached_or(self, key: tuple[object, ...], make: Callable[[], Tensor]) -> Tensor:
        key = (*self._codes_version(), self.scale._version, *key)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        value = make()
        self._cached = (key, value)
        return value

    def _codes_for_matmul(self) -> Tensor:
        return self.codes  # int8 storage: the codes themselves ("codes" caching is moot)

    def _float_weight(self, dtype: torch.dtype) -> Tensor:
        def make() -> Tensor:
            # one new tensor, scaled in place (codes * gamma, the fake-quantized weight's bits)
            return self._codes_for_matmul().to(dtype).mul_(self.scale.to(dtype))  # [out, in]

        if self.cache == "weight":
            return self._cached_or(("weight", dtype), make)
        return make()

    def forward(self, x: Tensor) -> Tensor:  # x: [..., in] -> [..., out]
        if self.hadamard_block is not None:  # H-BitLinear: Hadamard, then the norm
            x = hadamard_transform(x, self.hadamard_block)
        if self.norm is not None:
            x = self.norm(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.matmul == "int8":
            return self._int8_forward(x, bias)
        if self.act_bits is not None:
            x = activation_quantize_values(x, self.act_bits, self.eps)
        return F.linear(x, self._float_weight(x.dtype), bias)

    def _int8_forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        assert self.act_bits is not None
        codes, s = activation_codes(x.reshape(-1, self.in_features), self.act_bits, self.eps)
        acc = torch._int_mm(codes.to(torch.int8), self._codes_for_matmul().t())  # [M, out] int32
        # exact integer sums (|acc| <= 127 * in_features < 2^24 converts exactly to float32)
        y = acc.float().mul_(self.scale / s.float())
        if bias is not None:
            y += bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def weight_bytes(self) -> int:
        """Bytes this layer holds for its weight: codes (or packed codes), scale and any cache."""
        scale_bytes = self.scale.numel() * self.scale.element_size()
        return self._weight_storage_bytes() + scale_bytes + self.cache_bytes()

    def cache_bytes(self) -> int:
        """Bytes of the cached weight or codes (0 without a cache or before the first call)."""
        if self._cached is None:
            return 0
        return self._cached[1].numel() * self._cached[1].element_size()

    def _weight_storage_bytes(self) -> int:
        return self.codes.numel() * self.codes.element_size()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"act_bits={self.act_bits}, hadamard_block={self.hadamard_block}, "
            f"matmul={self.matmul}, cache={self.cache}"
        )


class PackedTernaryLinear(TernaryLinear):
    """A :class:`TernaryLinear` holding its codes packed (``base3``: 1.6 bits, ``2bit``: 2 bits).

    The codes are unpacked at every forward (a table lookup per byte), or once with
    ``cache="codes"``. Its state dict stores the int8 ``codes`` like a TernaryLinear's, so
    checkpoints and ``load_packed_into`` work unchanged; in memory it holds only the packed bytes.
    """

    def __init__(
        self,
        codes: Tensor,
        scale: Tensor,
        bias: Tensor | None,
        *,
        packing: str = "base3",
        **kwargs: Any,
    ) -> None:
        self.packing = packing
        super().__init__(codes, scale, bias, **kwargs)

    @classmethod
    def from_ternary(cls, layer: TernaryLinear, packing: str = "base3") -> PackedTernaryLinear:
        """The packed form of ``layer`` (same codes, scale, bias, norm, options)."""
        packed = cls(
            layer.int_codes(),
            layer.scale,
            None if layer.bias is None else layer.bias.detach(),
            packing=packing,
            act_bits=layer.act_bits,
            eps=layer.eps,
            norm=layer.norm,
            hadamard_block=layer.hadamard_block,
            matmul=layer.matmul,
            cache="none" if layer.cache == "none" else layer.cache,
        )
        return packed.train(layer.training)

    def _init_codes(self, codes: Tensor) -> None:
        self.register_buffer("codes_packed", pack_ternary(codes, self.packing), persistent=False)

    def int_codes(self) -> Tensor:
        """The ``[out, in]`` int8 codes, unpacked from the packed bytes."""
        codes = unpack_ternary(
            self.codes_packed.cpu(), (self.out_features, self.in_features), self.packing
        )
        return codes.to(self.codes_packed.device)

    @property
    def codes(self) -> Tensor:  # type: ignore[override]
        """The unpacked int8 codes (as a TernaryLinear exposes them; unpacked on each access)."""
        return self.int_codes()

    def _codes_version(self) -> tuple[object, ...]:
        p = self.codes_packed
        return (p.data_ptr(), p._version, p.device)

    def _codes_for_matmul(self) -> Tensor:
        if self.cache == "codes":
            return self._cached_or(("codes",), self.int_codes)
        return self.int_codes()

    def _weight_storage_bytes(self) -> int:
        return self.codes_packed.numel() * self.codes_packed.element_size()

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "codes"] = self.int_codes()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "codes"
        if key in state_dict:
            codes = state_dict.pop(key)
            if tuple(codes.shape) != (self.out_features, self.in_features):
                error_msgs.append(
                    f"size mismatch for {key}: copying codes of shape {tuple(codes.shape)}, "
                    f"the layer has {(self.out_features, self.in_features)}"
                )
            else:
                packed = pack_ternary(codes.to(torch.int8), self.packing)
                with torch.no_grad():
                    self.codes_packed = packed.to(self.codes_packed.device)
                self._cached = None
        elif strict:
            missing_keys.append(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, packing={self.packing}"


def configure_ternary(
    model: nn.Module,
    *,
    packing: str | None = None,
    matmul: MatmulMode | None = None,
    cache: CacheMode | None = None,
) -> nn.Module:
    """Set how every deployed ternary layer of ``model`` holds and multiplies its weights.

    Args:
        packing: ``"base3"`` or ``"2bit"`` turns each :class:`TernaryLinear` into a
            :class:`PackedTernaryLinear` (codes unpacked on the fly); ``"int8"`` turns packed
            layers back; None leaves the storage as it is.
        matmul, cache: see :class:`TernaryLinear`; None leaves them as they are.

    Returns:
        The model (the same object unless ``model`` itself was a replaced layer), in place.
    """
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, TernaryLinear):
            continue
        new = layer
        if packing is not None and packing != getattr(layer, "packing", "int8"):
            if packing == "int8":
                new = TernaryLinear(
                    layer.int_codes(),
                    layer.scale,
                    None if layer.bias is None else layer.bias.detach(),
                    act_bits=layer.act_bits,
                    eps=layer.eps,
                    norm=layer.norm,
                    hadamard_block=layer.hadamard_block,
                    matmul=layer.matmul,
                    cache=layer.cache,
                ).train(layer.training)
            else:
                new = PackedTernaryLinear.from_ternary(layer, packing)
        new.configure(matmul=matmul, cache=cache)
        if new is not layer:
            if name == "":
                return new
            model.set_submodule(name, new)
    return model
