"""Scheme ``hadamard``: H-BitLinear (BitNet v2), Hadamard-rotated activations, ternary weights."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..bitlinear import HBitLinear
from ..hadamard import is_power_of_two
from ..registry import LayerContext, Scheme, register_scheme
from .ternary import TernaryOptions


@dataclass(frozen=True, kw_only=True)
class HadamardOptions(TernaryOptions):
    """Options of the ``hadamard`` scheme: the ternary ones plus the Hadamard block cap.

    Attributes:
        block_size: largest Hadamard block (a power of two); None = the largest power of two that
            divides each layer's in_features. Layers whose in_features has no power-of-two block of
            at least 8 make ``prepare`` raise a ValueError naming the size.
    """

    block_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size is not None and not is_power_of_two(self.block_size):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")


def _build(module: nn.Module, context: LayerContext, options: HadamardOptions) -> HBitLinear | None:
    if not isinstance(module, nn.Linear):
        return None
    try:
        return HBitLinear.from_linear(
            module,
            block_size=options.block_size,
            act_bits=options.act_bits,
            input_norm=options.input_norm,
            eps=options.eps,
        )
    except ValueError as err:
        raise ValueError(f"layer {context.name!r}: {err}") from None


SCHEME = register_scheme(
    Scheme(
        "hadamard",
        "H-BitLinear: Hadamard-transformed activations, ternary weights",
        HadamardOptions,
        _build,
    )
)
