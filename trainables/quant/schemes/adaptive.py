"""Scheme ``adaptive``: learnable per-layer bit-widths (seed 000), for the bit-balanced loss."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..adaptive import AdaptiveBitLinear, check_bit_range
from ..registry import LayerContext, Scheme, register_scheme


@dataclass(frozen=True, kw_only=True)
class AdaptiveOptions:
    """Options of the ``adaptive`` scheme.

    Attributes:
        init_bits: starting (real) bit-width of every layer, in ``[min_bits, max_bits]``.
        min_bits, max_bits: bounds of the learned bit-width, within 2..8.
        quantize_input: also quantize each layer's input at its learned bit-width.

    Only ``nn.Linear`` layers are replaced (convolutions stay in full precision).
    """

    init_bits: float = 8.0
    min_bits: int = 2
    max_bits: int = 8
    quantize_input: bool = False

    def __post_init__(self) -> None:
        check_bit_range(self.init_bits, self.min_bits, self.max_bits)


def _build(
    module: nn.Module, context: LayerContext, options: AdaptiveOptions
) -> AdaptiveBitLinear | None:
    if not isinstance(module, nn.Linear):
        return None
    return AdaptiveBitLinear.from_linear(
        module,
        init_bits=options.init_bits,
        min_bits=options.min_bits,
        max_bits=options.max_bits,
        quantize_input=options.quantize_input,
    )


SCHEME = register_scheme(
    Scheme(
        "adaptive",
        "AdaptiveBitLinear: a learnable bit-width per layer (2..8), penalized by bit usage",
        AdaptiveOptions,
        _build,
    )
)
