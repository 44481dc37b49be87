"""The freeze window after a growth (seed 004): for a few batches only the new parameters train.

BitTransformerLM's scale-up keeps "a 5-batch freeze after each expansion": the pre-existing weights
stay as they were while the newly added ones (new blocks, new width slices, new gates, new
positions) adapt to them. Which elements are pre-existing is read from the grown model alone, so
any model family whose growth functions set ``grown_from`` works (see
:mod:`trainables.models.growth`):

- a parameter without an origin in the old model is new (a new block, a new exit gate);
- a parameter whose origin has its shape is pre-existing as a whole;
- a parameter whose origin is smaller (width growth, a longer position table) holds the
  pre-existing values in its leading block ``t[:o0, :o1, ...]`` (the growth functions lay copies out
  as ``[original, copy, ...]``); the rest of it is new.

While the window is open (:class:`FreezeWindow`):

- gradient hooks zero the gradient of every pre-existing element as it is computed, so gradient
  clipping and the optimizer's moments see only the new elements (under DDP the masked gradient is
  what is reduced);
- an optimizer step pre-hook drops the gradient of wholly pre-existing parameters (``grad = None``):
  optimizers skip such parameters, so neither their values nor their state (Adam's moments and step
  count) move;
- a step post-hook writes back the pre-existing slices of partly new parameters, which decoupled
  weight decay (AdamW) or carried momentum would otherwise move.

The pre-existing weights are therefore bit-identical for ``steps`` optimizer steps, whatever the
optimizer. A growth that adds no parameter (context growth with RoPE) has nothing to train, so the
caller opens no window for it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from trainables.models.growth import GROWN_FROM_ATTR


def freeze_spec(old: nn.Module, new: nn.Module) -> dict[str, list[int]]:
    """For each parameter of ``new`` grown from one of ``old``: the shape of its pre-existing block.

    Parameters absent from the result are wholly new. Matching goes through ``new.grown_from``
    (set by the growth functions), else equal names.
    """
    mapping: Mapping[str, str] = getattr(new, GROWN_FROM_ATTR, None) or {
        n: n for n, _ in new.named_parameters()
    }
    old_params = dict(old.named_parameters())
    spec: dict[str, list[int]] = {}
    for name, param in new.named_parameters():
        origin = old_params.get(mapping.get(name, ""))
        if origin is None:
            continue
        shape = list(origin.shape)
        if len(shape) != param.dim() or any(o > n for o, n in zip(shape, param.shape, strict=True)):
            raise ValueError(
                f"{name}: grown from a {tuple(shape)} tensor into {tuple(param.shape)}; the "
                "old one must fit in the new one's leading block"
            )
        spec[name] = shape
    return spec


def adds_parameters(model: nn.Module, spec: Mapping[str, Sequence[int]]) -> bool:
    """Whether ``model`` has any element outside the pre-existing blocks of ``spec``."""
    return any(
        name not in spec or tuple(spec[name]) != tuple(p.shape)
        for name, p in model.named_parameters()
    )


def _masked(grad: Tensor, box: tuple[slice, ...]) -> Tensor:
    """``grad`` with its pre-existing block zeroed (a copy: hooks must not edit their input)."""
    grad = grad.clone()
    grad[box] = 0
    return grad


class FreezeWindow:
    """Keeps the pre-existing elements of ``model`` bit-identical for ``steps`` optimizer steps.

    Args:
        model: the grown model (the parameters ``optimizer`` updates).
        optimizer: its optimizer; the window counts its steps.
        frozen: :func:`freeze_spec`'s map, parameter name -> pre-existing block shape.
        steps: how many optimizer steps the window lasts (0: no window).
        on_step: called after each frozen step with the number of steps left.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        frozen: Mapping[str, Sequence[int]],
        steps: int,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        params = dict(model.named_parameters())
        unknown = sorted(set(frozen) - set(params))
        if unknown:
            raise ValueError(f"frozen parameters not in the model: {', '.join(unknown[:3])}")
        self.whole: list[nn.Parameter] = []
        self.partial: list[tuple[nn.Parameter, tuple[slice, ...]]] = []
        for name, shape in frozen.items():
            param = params[name]
            if tuple(shape) == tuple(param.shape):
                self.whole.append(param)
            else:
                self.partial.append((param, tuple(slice(0, n) for n in shape)))
        self.steps_left = steps
        self.on_step = on_step
        self._saved: list[Tensor] = []
        self._handles: list[RemovableHandle] = []
        self._post: RemovableHandle | None = None
        if steps <= 0:
            return
        for param in self.whole:
            if param.requires_grad:
                self._handles.append(param.register_hook(torch.zeros_like))
        for param, box in self.partial:
            if param.requires_grad:
                self._handles.append(param.register_hook(functools.partial(_masked, box=box)))
        self._handles.append(optimizer.register_step_pre_hook(self._before_step))
        self._post = optimizer.register_step_post_hook(self._after_step)

    @property
    def active(self) -> bool:
        """Whether the next optimizer step is still frozen."""
        return self.steps_left > 0

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self.active:
            return
        for param in self.whole:
            param.grad = None  # optimizers skip it: no update, no decay, no state change
        self._saved = [param.detach()[box].clone() for param, box in self.partial]

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self.active:
            return
        with torch.no_grad():
            for (param, box), saved in zip(self.partial, self._saved, strict=True):
                param[box] = saved  # undo weight decay / momentum on the pre-existing block
        self._saved = []
        self.steps_left -= 1
        if self.on_step is not None:
            self.on_step(self.steps_left)
        if not self.active:
            self._release()  # the post-hook itself stays (a no-op): removing it here would
            # change the hook dict the optimizer is iterating

    def _release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.whole, self.partial, self._saved = [], [], []

    def close(self) -> None:
        """End the window now and remove every hook (never call it from inside a step)."""
        self.steps_left = 0
        self._release()
        if self._post is not None:
            self._post.remove()
            self._post = None
