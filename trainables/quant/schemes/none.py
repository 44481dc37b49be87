"""Scheme ``none``: full precision, the baseline every sweep compares against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..registry import LayerContext, Scheme, register_scheme

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True, kw_only=True)
class NoneOptions:
    """The ``none`` scheme takes no options."""


def _build(module: nn.Module, context: LayerContext, options: NoneOptions) -> None:
    return None


SCHEME = register_scheme(Scheme("none", "full precision (no quantization)", NoneOptions, _build))
