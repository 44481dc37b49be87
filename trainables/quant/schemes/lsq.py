"""Scheme ``lsq``: learned step size quantization of weights and activations (Esser et al. 2020)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..bounds import Signedness, check_bits
from ..registry import LEARNED_STEP_SIZES, LayerContext, Scheme, register_scheme

if TYPE_CHECKING:  # the layers load torch: imported where a model is built, not by the config
    from torch import nn

    from ..lsq import LSQConv2d, LSQLinear

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
        layer_bits: per-layer weight bits ``{qualified layer name: bits}`` for mixed precision
            (a searched per-layer space, issue 15); layers not named use ``weight_bits``. It
            overrides the first/last policy's weight bits for the layers it names. Pairs
            ``[[name, bits], ...]`` are accepted too (the run config's flat form).
    """

    weight_bits: int = 4
    act_bits: int | None = 4
    act_signed: Signedness = "auto"
    first_last: FirstLastPolicy = "8bit"
    layer_bits: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "weight_bits")
        if self.layer_bits is not None:
            object.__setattr__(self, "layer_bits", layer_bits_mapping(self.layer_bits))
            for name, bits in self.layer_bits.items():
                check_bits(bits, f"layer_bits[{name}]")
        if self.act_bits is not None:
            check_bits(self.act_bits, "act_bits")
        if self.act_signed not in (True, False, "auto"):
            raise ValueError(f"act_signed must be True, False or 'auto', got {self.act_signed!r}")
        if self.first_last not in FIRST_LAST_POLICIES:
            raise ValueError(
                f"first_last must be one of {', '.join(FIRST_LAST_POLICIES)}, "
                f"got {self.first_last!r}"
            )


def layer_bits_mapping(value: Any) -> dict[str, int]:
    """``{name: bits}`` from a mapping or from ``[[name, bits], ...]`` pairs."""
    pairs = value.items() if isinstance(value, Mapping) else value
    return {str(name): int(bits) for name, bits in pairs}


def _check(names: Sequence[str], options: LSQOptions) -> None:
    unknown = sorted(set(options.layer_bits or {}) - set(names))
    if unknown:
        raise ValueError(
            f"layer_bits names layer(s) {', '.join(unknown)} that the model does not quantize; "
            f"its quantized layers: {', '.join(names)}"
        )


def _build(
    module: nn.Module, context: LayerContext, options: LSQOptions
) -> LSQLinear | LSQConv2d | None:
    from torch import nn

    from ..lsq import LSQConv2d, LSQLinear

    weight_bits, act_bits = options.weight_bits, options.act_bits
    if context.is_first or context.is_last:
        if options.first_last == "fp" and context.name not in (options.layer_bits or {}):
            return None
        if options.first_last == "8bit":
            weight_bits, act_bits = 8, None if act_bits is None else 8
    if options.layer_bits and context.name in options.layer_bits:
        weight_bits = options.layer_bits[context.name]
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
        check=_check,
        capabilities=frozenset({LEARNED_STEP_SIZES}),
    )
)
