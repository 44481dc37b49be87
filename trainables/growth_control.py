"""When and how a run grows its model (seed 004, BitTransformerLM's progressive scale-up).

Grow when the validation loss improved by less than ``growth.improve_thresh`` over the last
``growth.window`` evaluations; strategies cycle through ``growth.strategy`` (depth, width,
context); after each growth the learning rate is divided by sqrt(2) and warmed up again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from trainables.config import RunConfig
from trainables.models.growth import grow_context, grow_depth, grow_width, move_optimizer_to_grown

WIDTH_NOISE_STD = 1e-2


@dataclass
class GrowthState:
    """Growth bookkeeping that a checkpoint carries."""

    stage: int = 0
    history: list[float] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    lr_scale: float = 1.0
    warmup_start: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GrowthState:
        """Rebuild from :meth:`to_dict`'s output."""
        return cls(**data)


def should_grow(state: GrowthState, metrics: dict[str, float], cfg: RunConfig) -> bool:
    """Record this evaluation's ``val/loss``; True when it has plateaued and growth is left."""
    if state.stage >= cfg.growth.max_growths:
        return False
    state.history.append(float(metrics["val/loss"]))
    window = cfg.growth.window
    if len(state.history) <= window:
        return False
    improvement = state.history[-window - 1] - state.history[-1]
    return improvement < cfg.growth.improve_thresh


def grow_model(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: GrowthState,
    cfg: RunConfig,
    step: int,
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Grow ``model`` by the next strategy; returns the new model and its optimizer.

    New parameters get fresh optimizer state, old ones keep theirs; the learning rate scale is
    divided by sqrt(2) and a new warm-up starts at ``step``.
    """
    strategy = cfg.growth.strategy[state.stage % len(cfg.growth.strategy)]
    generator = torch.Generator().manual_seed(cfg.train.seed * 1009 + state.stage)
    before = model.config
    if strategy == "depth":
        grown = grow_depth(model, 1, generator=generator)
    elif strategy == "width":
        # noise breaks the symmetry of duplicated units (it cancels across copies in full precision)
        grown = grow_width(model, 2, noise_std=WIDTH_NOISE_STD, generator=generator)
    else:
        grown = grow_context(model, 2)
    grown = grown.to(next(model.parameters()).device)
    new_optimizer = move_optimizer_to_grown(model, grown, optimizer, lr_divisor=1.0)
    state.events.append(
        {
            "step": step,
            "strategy": strategy,
            "val_loss": state.history[-1],
            "n_layers": grown.config.n_layers,
            "d_model": grown.config.d_model,
            "seq_len": grown.config.seq_len,
            "params_before": sum(p.numel() for p in model.parameters()),
            "params_after": sum(p.numel() for p in grown.parameters()),
            "from": {"n_layers": before.n_layers, "d_model": before.d_model},
        }
    )
    state.stage += 1
    state.history = []
    state.lr_scale /= math.sqrt(2.0)
    state.warmup_start = step
    return grown, new_optimizer
