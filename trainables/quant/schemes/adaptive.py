"""Scheme ``adaptive``: learnable per-layer bit-widths (seed 000), for the bit-balanced loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..bounds import check_bit_range
from ..registry import LEARNABLE_BITS, LayerContext, Scheme, register_scheme

if TYPE_CHECKING:  # the layers load torch: imported where a model is built, not by the config
    from torch import nn

    from ..adaptive import AdaptiveBitLinear


@dataclass(frozen=True, kw_only=True)
class AdaptiveOptions:
    """Options of the ``adaptive`` scheme.

    Attributes:
        init_bits: starting (real) bit-width of every layer, in ``[min_bits, max_bits]``.
        min_bits, max_bits: bounds of the learned bit-width, within 2..8.
        quantize_input: also quantize each layer's input at its learned bit-width.
        bit_lr: Adam learning rate of the bit-width parameters (their own optimizer group, see
            ``trainables/quant/optim.py``), in (0, 10]; None trains them at ``train.lr``. The
            layers do not read it; the training loop does.

    Only ``nn.Linear`` layers are replaced (convolutions stay in full precision).
    """

    init_bits: float = 8.0
    min_bits: int = 2
    max_bits: int = 8
    quantize_input: bool = False
    bit_lr: float | None = 0.05

    def __post_init__(self) -> None:
        check_bit_range(self.init_bits, self.min_bits, self.max_bits)
        if self.bit_lr is not None and not 0.0 < self.bit_lr <= 10.0:
            raise ValueError(f"bit_lr must be in (0, 10] or None, got {self.bit_lr}")


def _build(
    module: nn.Module, context: LayerContext, options: AdaptiveOptions
) -> AdaptiveBitLinear | None:
    from torch import nn

    from ..adaptive import AdaptiveBitLinear

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
        capabilities=frozenset({LEARNABLE_BITS}),
    )
)
