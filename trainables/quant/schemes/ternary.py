"""Scheme ``ternary``: BitNet b1.58 BitLinear (absmean ternary weights, 8-bit activations)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..bounds import DEFAULT_EPS
from ..registry import TERNARY_WEIGHTS, LayerContext, Scheme, register_scheme

if TYPE_CHECKING:  # the layers load torch: imported where a model is built, not by the config
    from torch import nn

    from ..bitlinear import BitLinear


@dataclass(frozen=True, kw_only=True)
class TernaryOptions:
    """Options of the ``ternary`` scheme.

    Attributes:
        act_bits: activation bits (2..16), or None for full-precision activations.
        input_norm: put an RMSNorm on each layer's input (BitNet's BitLinear does).
        eps: guards the absmean / absmax scales.
    """

    act_bits: int | None = 8
    input_norm: bool = False
    eps: float = DEFAULT_EPS

    def __post_init__(self) -> None:
        if self.act_bits is not None and not 2 <= self.act_bits <= 16:
            raise ValueError(f"act_bits must be in 2..16 or None, got {self.act_bits}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")


def _build(module: nn.Module, context: LayerContext, options: TernaryOptions) -> BitLinear | None:
    from torch import nn

    from ..bitlinear import BitLinear

    if not isinstance(module, nn.Linear):
        return None
    return BitLinear.from_linear(
        module, act_bits=options.act_bits, input_norm=options.input_norm, eps=options.eps
    )


SCHEME = register_scheme(
    Scheme(
        "ternary",
        "BitNet b1.58 BitLinear: ternary weights, 8-bit activations",
        TernaryOptions,
        _build,
        capabilities=frozenset({TERNARY_WEIGHTS}),
    )
)
