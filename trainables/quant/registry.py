"""The scheme registry: a quantization scheme is one module that registers a :class:`Scheme`.

A scheme's options dataclass is also the ``quant`` section of the run config
(``trainables.quant_config`` builds one config type per registered scheme), and its
``capabilities`` tell the config and the objective what the scheme can do, so that no code outside
the scheme module tests a scheme's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry itself needs no torch (the config reads it)
    from torch import nn

# What a scheme can do, declared on its registry entry (``Scheme.capabilities``).
LEARNABLE_BITS = "learnable_bits"  # a learned bit-width per layer: bit_balanced_ce, quant.bit_lr
LEARNED_STEP_SIZES = "learned_step_sizes"  # LSQ step sizes: bin regularization, freeze_alpha
TERNARY_WEIGHTS = "ternary_weights"  # ternary weights that the exporters can pack
CAPABILITIES: frozenset[str] = frozenset({LEARNABLE_BITS, LEARNED_STEP_SIZES, TERNARY_WEIGHTS})


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
BuildFn = Callable[["nn.Module", LayerContext, Any], "nn.Module | None"]
# check(names, options): raise ValueError when the layers a model offers do not suit the options
CheckFn = Callable[[Sequence[str], Any], None]


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme: its options dataclass and how it replaces one layer.

    ``options_type`` is a keyword-only dataclass whose ``__post_init__`` checks every bound and
    cross-field rule (raising a ValueError whose message starts with the field's name); the run
    config's ``quant`` section is validated by it. ``check``, when given, sees the qualified
    names of the layers ``prepare`` is about to quantize (the whole model, not a grown part) and
    raises a ValueError for options that make no sense on them (for example a Hadamard placement
    that selects no layer). ``capabilities`` are names from :data:`CAPABILITIES`.
    """

    name: str
    description: str
    options_type: type
    build: BuildFn
    check: CheckFn | None = None
    capabilities: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.options_type):
            raise TypeError(f"scheme {self.name!r}: options_type must be a dataclass")
        unknown = sorted(set(self.capabilities) - CAPABILITIES)
        if unknown:
            raise ValueError(
                f"scheme {self.name!r}: unknown capabilities {', '.join(unknown)}; "
                f"known: {', '.join(sorted(CAPABILITIES))}"
            )
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))

    def has(self, capability: str) -> bool:
        """Whether the scheme declares ``capability`` (one of :data:`CAPABILITIES`)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; known: {sorted(CAPABILITIES)}")
        return capability in self.capabilities

    def option_names(self) -> tuple[str, ...]:
        """The names of the scheme's options, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(self.options_type))

    def make_options(self, options: Mapping[str, Any]) -> Any:
        """Validate ``options`` into the scheme's options dataclass, naming any unknown key."""
        known = set(self.option_names())
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


def schemes_with(capability: str) -> tuple[str, ...]:
    """The registered schemes that declare ``capability``, sorted."""
    return tuple(name for name in available_schemes() if get_scheme(name).has(capability))


def schemes_taking(option: str) -> tuple[str, ...]:
    """The registered schemes that have an option called ``option``, sorted."""
    return tuple(name for name in available_schemes() if option in get_scheme(name).option_names())


def all_option_names(schemes: Iterable[str] | None = None) -> tuple[str, ...]:
    """Every option name of ``schemes`` (default: all registered), sorted."""
    names = available_schemes() if schemes is None else tuple(schemes)
    return tuple(sorted({o for name in names for o in get_scheme(name).option_names()}))
