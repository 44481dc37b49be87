"""Scheme ``hadamard``: H-BitLinear (BitNet v2) where inputs have outliers, BitLinear elsewhere.

BitNet v2 (arXiv 2504.18415) puts the online Hadamard transform on the projections whose inputs
carry outliers, the attention output (``o_proj``) and the FFN down projection (``down_proj``);
the other projections stay plain BitLinear. ``hadamard_layers`` says which layers get it
(``("all",)``: every layer, the earlier behaviour of this scheme).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..bounds import MIN_BLOCK, is_power_of_two
from ..registry import TERNARY_WEIGHTS, LayerContext, Scheme, register_scheme
from .ternary import TernaryOptions

if TYPE_CHECKING:  # the layers load torch: imported where a model is built, not by the config
    from torch import nn

    from ..bitlinear import BitLinear

BITNET_V2_LAYERS: tuple[str, ...] = ("o_proj", "down_proj")


def hadamard_layer_selected(name: str, patterns: Sequence[str]) -> bool:
    """Whether the layer called ``name`` (qualified, e.g. ``blocks.0.attn.o_proj``) is selected.

    A pattern selects a layer when it is ``"all"``, equals the name's last component
    (``o_proj``), equals the whole name, or matches the whole name as a glob (``blocks.0.*``).
    """
    last = name.rsplit(".", 1)[-1]
    return any(p in ("all", last, name) or fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True, kw_only=True)
class HadamardOptions(TernaryOptions):
    """Options of the ``hadamard`` scheme: the ternary ones plus placement and block cap.

    Attributes:
        block_size: largest Hadamard block (a power of two); None = the largest power of two that
            divides each layer's in_features. Selected layers whose in_features has no
            power-of-two block of at least 8 make ``prepare`` raise a ValueError naming the size.
        hadamard_layers: which layers become H-BitLinear (see :func:`hadamard_layer_selected`);
            the others become BitLinear with the same options. A comma-separated string is
            accepted too.
    """

    block_size: int | None = None
    hadamard_layers: tuple[str, ...] = BITNET_V2_LAYERS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size is not None and not (
            is_power_of_two(self.block_size) and self.block_size >= MIN_BLOCK
        ):
            raise ValueError(
                f"block_size must be a power of two >= {MIN_BLOCK} (or None), got {self.block_size}"
            )
        layers = self.hadamard_layers
        if isinstance(layers, str):
            layers = tuple(part.strip() for part in layers.split(",") if part.strip())
        layers = tuple(layers)
        if not layers or not all(isinstance(p, str) and p for p in layers):
            raise ValueError(
                "hadamard_layers must name at least one layer (or 'all'), "
                f"got {self.hadamard_layers!r}"
            )
        object.__setattr__(self, "hadamard_layers", layers)


def _build(module: nn.Module, context: LayerContext, options: HadamardOptions) -> BitLinear | None:
    from torch import nn

    from ..bitlinear import BitLinear, HBitLinear

    if not isinstance(module, nn.Linear):
        return None
    common = {"act_bits": options.act_bits, "input_norm": options.input_norm, "eps": options.eps}
    if not hadamard_layer_selected(context.name, options.hadamard_layers):
        return BitLinear.from_linear(module, **common)
    try:
        return HBitLinear.from_linear(module, block_size=options.block_size, **common)
    except ValueError as err:
        raise ValueError(f"layer {context.name!r}: {err}") from None


def _check(names: Sequence[str], options: HadamardOptions) -> None:
    # a hadamard model without one H-BitLinear would silently be a ternary one
    if names and not any(hadamard_layer_selected(n, options.hadamard_layers) for n in names):
        raise ValueError(
            f"quant.hadamard_layers {list(options.hadamard_layers)} selects none of the layers "
            f"this scheme quantizes ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}); "
            f"name some of them, or use 'all' to put H-BitLinear everywhere"
        )


SCHEME = register_scheme(
    Scheme(
        "hadamard",
        "H-BitLinear (Hadamard-transformed activations) on the layers in hadamard_layers "
        "(default o_proj, down_proj), BitLinear elsewhere; ternary weights",
        HadamardOptions,
        _build,
        check=_check,
        capabilities=frozenset({TERNARY_WEIGHTS}),
    )
)
