"""When and how a run grows its model (seed 004, BitTransformerLM's progressive scale-up).

The seed's rules, each a ``growth`` key:

- grow when the validation loss improved by less than ``improve_thresh`` over the last ``window``
  evaluations; strategies cycle through ``strategy`` (depth, width, context), at most
  ``max_growths`` times;
- after each growth divide the learning rate by sqrt(2) and warm it up again over
  ``lr_warmup_steps`` (default 100, the seed's value; :func:`trainables.loop.learning_rate`);
- freeze the pre-existing weights for ``freeze_steps`` batches (default 5) after each expansion:
  only the newly added parameters train (:mod:`trainables.growth_freeze`);
- a final plateau: no growth in the last ``final_plateau_frac`` of ``train.steps`` (default 0.2),
  so the final model trains at its final size;
- each growth is an event (step, kind, old and new size, learning rate) kept in
  :class:`GrowthState` and reported as metrics (:mod:`trainables.growth_events`), which the
  tracker writes to the trial's MLflow run as ``growth_events.json``.

Model-agnostic: sizes are read from ``model.config`` (``n_layers``, ``d_model``, ``seq_len`` where
the config has them), the freeze from the grown model's ``grown_from`` map.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from trainables.config import RunConfig
from trainables.growth_events import SIZE_FIELDS, event_metrics
from trainables.growth_freeze import FreezeWindow, adds_parameters, freeze_spec
from trainables.models.growth import grow_context, grow_depth, grow_width
from trainables.models.growth_optim import move_optimizer_to_grown

WIDTH_NOISE_STD = 1e-2
# the open freeze window of each model (a plain attribute would be deep-copied with the model)
_WINDOWS: weakref.WeakKeyDictionary[nn.Module, FreezeWindow] = weakref.WeakKeyDictionary()


@dataclass
class GrowthState:
    """Growth bookkeeping that a checkpoint carries (plain data: ``to_dict`` / ``from_dict``)."""

    stage: int = 0
    history: list[float] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    lr_scale: float = 1.0
    warmup_start: int | None = None
    freeze_left: int = 0  # optimizer steps the current freeze window still lasts
    frozen: dict[str, list[int]] = field(default_factory=dict)  # its freeze_spec

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GrowthState:
        """Rebuild from :meth:`to_dict`'s output (older checkpoints lack the freeze fields)."""
        return cls(**data)


def in_final_plateau(step: int, cfg: RunConfig) -> bool:
    """Whether ``step`` lies in the final plateau, the last ``final_plateau_frac`` of the steps."""
    return step >= (1.0 - cfg.growth.final_plateau_frac) * cfg.train.steps


def should_grow(
    state: GrowthState, metrics: dict[str, float], cfg: RunConfig, step: int | None = None
) -> bool:
    """Record this evaluation's ``val/loss``; True when it has plateaued and growth is left.

    ``step`` defaults to ``metrics["step"]``; in the final plateau nothing is recorded and the
    answer is False.
    """
    step = int(metrics["step"]) if step is None else step
    if state.stage >= cfg.growth.max_growths or in_final_plateau(step, cfg):
        return False
    state.history.append(float(metrics["val/loss"]))
    window = cfg.growth.window
    if len(state.history) <= window:
        return False
    improvement = state.history[-window - 1] - state.history[-1]
    return improvement < cfg.growth.improve_thresh


def size_of(model: nn.Module) -> dict[str, int | None]:
    """Parameter count and the config's ``n_layers``, ``d_model``, ``seq_len`` (None if absent)."""
    config = getattr(model, "config", None)
    size: dict[str, int | None] = {"params": sum(p.numel() for p in model.parameters())}
    for name in SIZE_FIELDS[1:]:
        value = getattr(config, name, None)
        size[name] = int(value) if value is not None else None
    return size


def attach_freeze(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: GrowthState
) -> FreezeWindow | None:
    """Open the freeze window ``state`` describes on ``model`` (after a growth, or on resume)."""
    old = _WINDOWS.pop(model, None)
    if old is not None:
        old.close()
    if state.freeze_left <= 0:
        return None

    def count(left: int) -> None:
        state.freeze_left = left
        if left == 0:
            state.frozen = {}

    window = FreezeWindow(model, optimizer, state.frozen, state.freeze_left, on_step=count)
    _WINDOWS[model] = window
    return window


def grow_model(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: GrowthState,
    cfg: RunConfig,
    step: int,
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Grow ``model`` by the next strategy; returns the new model and its optimizer.

    New parameters get fresh optimizer state, old ones keep theirs; the learning rate scale is
    divided by sqrt(2), a new warm-up starts at ``step``, the pre-existing weights are frozen for
    ``growth.freeze_steps`` optimizer steps (if the growth added parameters) and the event is
    appended to ``state.events``.
    """
    window = _WINDOWS.pop(model, None)
    if window is not None:  # a growth inside a window ends it; the new window covers all old parts
        window.close()
    strategy = cfg.growth.strategy[state.stage % len(cfg.growth.strategy)]
    generator = torch.Generator().manual_seed(cfg.train.seed * 1009 + state.stage)
    if strategy == "depth":
        grown = grow_depth(model, 1, generator=generator)
    elif strategy == "width":
        # noise breaks the symmetry of duplicated units (it cancels across copies in full precision)
        grown = grow_width(model, 2, noise_std=WIDTH_NOISE_STD, generator=generator)
    else:
        grown = grow_context(model, 2)
    grown = grown.to(next(model.parameters()).device)
    new_optimizer = move_optimizer_to_grown(model, grown, optimizer, lr_divisor=1.0)
    frozen = freeze_spec(model, grown)
    freeze = cfg.growth.freeze_steps if adds_parameters(grown, frozen) else 0
    lr_before = cfg.train.lr * state.lr_scale
    state.lr_scale /= math.sqrt(2.0)
    state.events.append(
        {
            "step": step,
            "kind": strategy,
            "old": size_of(model),
            "new": size_of(grown),
            "lr_before": lr_before,
            "lr": cfg.train.lr * state.lr_scale,  # the base rate the warm-up climbs back to
            "val_loss": state.history[-1] if state.history else None,
            "freeze_steps": freeze,
        }
    )
    state.stage += 1
    state.history = []
    state.warmup_start = step
    state.freeze_left = freeze
    state.frozen = frozen if freeze else {}
    attach_freeze(grown, new_optimizer, state)
    return grown, new_optimizer


def last_event_metrics(state: GrowthState, step: int) -> dict[str, float]:
    """The ``growth/*`` event metrics to report at ``step`` (empty unless it grew at ``step``)."""
    if not state.events or state.events[-1]["step"] != step:
        return {}
    return event_metrics(state.events[-1])
