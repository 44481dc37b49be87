"""The scheme registry: a quantization scheme is one module that registers a :class:`Scheme`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class LayerContext:
    """Where a layer sits among the layers a swap pass quantizes (for first/last-layer policies).

    ``is_first`` / ``is_last`` mark the first and last Linear/Conv2d layers of the whole model in
    module order (the last is the head, which ``prepare`` only quantizes with ``keep_head=False``);
    layers added later to a grown model (``apply_recipe``) are neither.
    """

    name: str
    is_first: bool = False
    is_last: bool = False


# build(module, context, options) -> replacement module, or None to leave the module as it is
BuildFn = Callable[[nn.Module, LayerContext, Any], "nn.Module | None"]
# check(names, options): raise ValueError when the layers a model offers do not suit the options
CheckFn = Callable[[Sequence[str], Any], None]


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme: its options dataclass and how it replaces one layer.

    ``check``, when given, sees the qualified names of the layers ``prepare`` is about to
    quantize (the whole model, not a grown part) and raises a ValueError for options that make
    no sense on them (for example a Hadamard placement that selects no layer).
    """

    name: str
    description: str
    options_type: type
    build: BuildFn
    check: CheckFn | None = None

    def make_options(self, options: Mapping[str, Any]) -> Any:
        """Validate ``options`` into the scheme's options dataclass, naming any unknown key."""
        known = {f.name for f in dataclasses.fields(self.options_type)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} for quantization scheme {self.name!r}; "
                f"valid options: {', '.join(sorted(known)) or '(none)'}"
            )
        return self.options_type(**options)


_SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> Scheme:
    """Add ``scheme`` to the registry (a second scheme of the same name is an error)."""
    if scheme.name in _SCHEMES and _SCHEMES[scheme.name] is not scheme:
        raise ValueError(f"quantization scheme {scheme.name!r} is already registered")
    _SCHEMES[scheme.name] = scheme
    return scheme


def available_schemes() -> tuple[str, ...]:
    """The registered scheme names, sorted."""
    return tuple(sorted(_SCHEMES))


def get_scheme(name: str) -> Scheme:
    """The scheme called ``name``; a ValueError lists the valid names otherwise."""
    try:
        return _SCHEMES[name]
    except KeyError:
        raise ValueError(
            f"unknown quantization scheme {name!r}; valid schemes: {', '.join(available_schemes())}"
        ) from None
