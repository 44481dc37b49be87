"""Scheme ``lsq``: learned step size quantization of weights and activations (Esser et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from ..lsq import LSQConv2d, LSQLinear, Signedness, check_bits
from ..registry import LayerContext, Scheme, register_scheme

FirstLastPolicy = Literal["8bit", "fp", "same"]
FIRST_LAST_POLICIES: tuple[str, ...] = ("8bit", "fp", "same")


@dataclass(frozen=True, kw_only=True)
class LSQOptions:
    """Options of the ``lsq`` scheme (config: ``quant.weight_bits``, ``quant.act_bits``, ...).

    Attributes:
        weight_bits: weight bits, 2..8 (signed grid).
        act_bits: input-activation bits, 2..8, or None for full-precision activations.
        act_signed: activation grid: True (signed), False (unsigned, after ReLU) or ``"auto"``
            (unsigned when the first batch a layer quantizes has no negative value).
        first_last: policy for the model's first layer and its last one (the head, which
            ``prepare`` already keeps in full precision unless ``keep_head=False``): ``"8bit"``
            (8-bit weights and activations, the LSQ paper's choice), ``"fp"`` (full precision) or
            ``"same"`` (the bits above).
    """

    weight_bits: int = 4
    act_bits: int | None = 4
    act_signed: Signedness = "auto"
    first_last: FirstLastPolicy = "8bit"

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "weight_bits")
        if self.act_bits is not None:
            check_bits(self.act_bits, "act_bits")
        if self.act_signed not in (True, False, "auto"):
            raise ValueError(f"act_signed must be True, False or 'auto', got {self.act_signed!r}")
        if self.first_last not in FIRST_LAST_POLICIES:
            raise ValueError(
                f"first_last must be one of {', '.join(FIRST_LAST_POLICIES)}, "
                f"got {self.first_last!r}"
            )


def _build(
    module: nn.Module, context: LayerContext, options: LSQOptions
) -> LSQLinear | LSQConv2d | None:
    weight_bits, act_bits = options.weight_bits, options.act_bits
    if context.is_first or context.is_last:
        if options.first_last == "fp":
            return None
        if options.first_last == "8bit":
            weight_bits, act_bits = 8, None if act_bits is None else 8
    settings = {"weight_bits": weight_bits, "act_bits": act_bits, "act_signed": options.act_signed}
    if isinstance(module, nn.Linear):
        return LSQLinear.from_linear(module, **settings)
    if isinstance(module, nn.Conv2d):
        return LSQConv2d.from_conv(module, **settings)
    return None


SCHEME = register_scheme(
    Scheme(
        "lsq",
        "LSQ: learned step size quantization of weights and activations (2..8 bits)",
        LSQOptions,
        _build,
    )
)
