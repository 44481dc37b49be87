"""The swap pass: ``prepare`` quantizes a model's layers by scheme, ``convert`` freezes it.

``prepare`` replaces ``nn.Linear`` (and ``nn.Conv2d`` where the scheme has a conv layer) in place,
keeps the output head (the last ``nn.Linear`` in module order) in full precision unless asked, and
records its recipe on the model so that layers added later (progressive growth) are quantized alike.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .base import QuantLayer
from .registry import LayerContext, get_scheme

RECIPE_ATTR = "bitsweep_quant_recipe"


@dataclass(frozen=True)
class QuantRecipe:
    """How a model was quantized: enough to quantize new layers the same way."""

    scheme: str
    options: Mapping[str, Any] = field(default_factory=dict)
    keep_head: bool = True
    exclude: tuple[str, ...] = ()


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(
        fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") or name == p for p in patterns
    )


def _quantizable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear / Conv2d not already inside a quantized layer."""
    found: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, QuantLayer):
            inside.append(name)
            continue
        if isinstance(module, nn.Linear | nn.Conv2d):
            found.append((name, module))
    return found


def _replace(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if name == "":
        return new
    root.set_submodule(name, new)
    return root


def prepare(
    model: nn.Module,
    scheme: str,
    *,
    keep_head: bool = True,
    exclude: Sequence[str] = (),
    **options: Any,
) -> nn.Module:
    """Quantize ``model``'s Linear (and Conv2d) layers with ``scheme``, in place.

    Args:
        model: any module; a bare ``nn.Linear`` (which has no head to keep) is returned replaced.
        scheme: a registered scheme name (see ``available_schemes()``); unknown names raise a
            ValueError listing the valid ones.
        keep_head: keep the last ``nn.Linear`` in module order (the output head) in full precision.
        exclude: qualified module names or glob patterns to leave in full precision
            (embeddings are never touched: they are not Linear layers).
        **options: the scheme's options (for example ``act_bits=8``); unknown ones raise.

    Returns:
        The model (the same object unless ``model`` itself was replaced).
    """
    spec = get_scheme(scheme)
    opts = spec.make_options(options)
    candidates = _quantizable(model)
    excluded = set()
    if keep_head:
        linears = [name for name, m in candidates if isinstance(m, nn.Linear)]
        if linears and not (len(candidates) == 1 and linears[0] == ""):
            excluded.add(linears[-1])
    chosen = [
        (name, m) for name, m in candidates if name not in excluded and not _matches(name, exclude)
    ]
    first, last = candidates[0][0] if candidates else "", candidates[-1][0] if candidates else ""
    if spec.check is not None:
        spec.check([name for name, _ in chosen], opts)
    for name, module in chosen:
        context = LayerContext(name, is_first=name == first, is_last=name == last)
        new = spec.build(module, context, opts)
        if new is not None:
            model = _replace(model, name, new)
    recipe = QuantRecipe(scheme, asdict(opts), keep_head, tuple(exclude))
    object.__setattr__(model, RECIPE_ATTR, recipe)
    return model


def quant_recipe(model: nn.Module) -> QuantRecipe | None:
    """The recipe ``prepare`` recorded on ``model``, or None."""
    return getattr(model, RECIPE_ATTR, None)


def apply_recipe(module: nn.Module, recipe: QuantRecipe) -> nn.Module:
    """Quantize every Linear / Conv2d of ``module`` (for example a new block) like ``recipe`` says.

    No head is kept and no first/last-layer policy applies: the module is a part of a larger model.
    """
    spec = get_scheme(recipe.scheme)
    opts = spec.make_options(recipe.options)
    for name, layer in _quantizable(module):
        new = spec.build(layer, LayerContext(name), opts)
        if new is not None:
            module = _replace(module, name, new)
    return module


def _swap_quant_layers(model: nn.Module, how: str) -> nn.Module:
    top = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]
    done: list[str] = []
    for name, layer in top:
        if any(name.startswith(p + ".") for p in done):
            continue
        model = _replace(model, name, getattr(layer, how)())
        done.append(name)
    return model


def convert(model: nn.Module) -> nn.Module:
    """Freeze a trained, prepared model into its deployable form, in place, in eval mode.

    Every quantized layer becomes its scheme's inference form (ternary layers: int8 codes and a
    scale), computing what the fake-quantized model computes in evaluation at lam = 1.
    """
    model = _swap_quant_layers(model, "to_deployed")
    return model.eval()


def dequantize(model: nn.Module) -> nn.Module:
    """Replace every quantized layer by its full-precision module (latent weights), in place."""
    return _swap_quant_layers(model, "to_float")
