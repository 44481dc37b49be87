"""The optimizer and learning rate across a growth step (seed 004, BitTransformerLM's progressive
scale-up): Adam's moments carried to the grown model's parameters, the lr scaled down per growth
and warmed up again. Split from :mod:`.growth`, which grows the model itself.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from .growth import GROWN_FROM_ATTR


def _pattern(name: str) -> str:
    return re.sub(r"\.\d+(?=\.)", ".*", name)


def move_optimizer_to_grown(
    old_model: nn.Module,
    new_model: nn.Module,
    old_optimizer: torch.optim.Optimizer,
    *,
    lr_divisor: float = math.sqrt(2.0),
) -> torch.optim.Optimizer:
    """A new optimizer of the same class over ``new_model``, carrying state by parameter name.

    Parameters are matched through ``new_model.grown_from`` (set by the growth functions; without
    it, by equal names). A matched parameter of unchanged shape keeps its state (for Adam: ``step``,
    ``exp_avg``, ``exp_avg_sq``) and its param group; a new parameter, or one whose shape changed
    (every parameter after width growth), starts with fresh state, in the group of an old
    parameter with the same name up to layer indices (else the first group). Every group's learning
    rate (and ``initial_lr`` if a scheduler set one) is divided by ``lr_divisor`` (seed 004:
    sqrt(2)); warm it up again with :func:`growth_warmup`.
    """
    mapping: dict[str, str] = getattr(new_model, GROWN_FROM_ATTR, None) or {
        n: n for n, _ in new_model.named_parameters()
    }
    old_params = dict(old_model.named_parameters())
    group_of: dict[str, int] = {}
    by_id = {id(p): n for n, p in old_params.items()}
    for gi, group in enumerate(old_optimizer.param_groups):
        for p in group["params"]:
            if id(p) in by_id:
                group_of[by_id[id(p)]] = gi
    pattern_group = {_pattern(n): g for n, g in group_of.items()}
    members: list[list[Tensor]] = [[] for _ in old_optimizer.param_groups]
    carried: list[tuple[Tensor, Tensor]] = []
    for name, param in new_model.named_parameters():
        origin = mapping.get(name)
        if origin in group_of:
            members[group_of[origin]].append(param)
            old = old_params[origin]
            if old.shape == param.shape and old in old_optimizer.state:
                carried.append((param, old))
        else:
            members[pattern_group.get(_pattern(name), 0)].append(param)
    groups = []
    for group, params in zip(old_optimizer.param_groups, members, strict=True):
        if params:
            hyper = {k: v for k, v in group.items() if k != "params"}
            hyper["lr"] = hyper["lr"] / lr_divisor
            if "initial_lr" in hyper:
                hyper["initial_lr"] = hyper["initial_lr"] / lr_divisor
            groups.append({**hyper, "params": params})
    cls = type(old_optimizer)
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in old_optimizer.defaults.items() if k in accepted}
    new_optimizer = cls(groups, **kwargs)
    for new_param, old_param in carried:
        new_optimizer.state[new_param] = {
            k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)
            for k, v in old_optimizer.state[old_param].items()
        }
    return new_optimizer


def growth_lr(base_lr: float, n_growths: int = 1, divisor: float = math.sqrt(2.0)) -> float:
    """Seed 004's rule: the base learning rate after ``n_growths`` growths, ``base / sqrt(2)^n``."""
    if n_growths < 0:
        raise ValueError(f"n_growths must be >= 0, got {n_growths}")
    return base_lr / divisor**n_growths


def warmup_factor(step_since_growth: int, warmup_steps: int) -> float:
    """Linear warm-up multiplier ``min(1, (s + 1) / warmup_steps)`` (1 if ``warmup_steps`` <= 0)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step_since_growth + 1) / warmup_steps)


def growth_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LambdaLR:
    """A scheduler warming ``optimizer``'s current learning rates up again over ``warmup_steps``.

    Call ``scheduler.step()`` after each optimizer step; the rates reach their (already divided)
    values after ``warmup_steps`` steps and stay there.
    """
    fn: Callable[[int], float] = lambda s: warmup_factor(s, warmup_steps)  # noqa: E731
    return LambdaLR(optimizer, fn)
