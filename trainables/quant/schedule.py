"""Gradual quantization: the lam schedules of "Fine-tuning LLMs to 1.58bit" (Hugging Face, 2024).

``lam`` rises from 0 (full precision) to 1 (fully quantized) over the first ``warmup_frac`` of the
training steps, then stays at 1. The blend reaches the layers of the schemes in ``applies_to``
(default: the ternary ones); the others quantize fully from the first step. Kinds, with
``t = min(step / warmup_steps, 1)``:

* ``linear``: ``lam = t`` (the best in the blog post);
* ``exponential``: ``lam = 1 - (1 - t)^k``;
* ``sigmoid``: a logistic curve of slope ``k`` centred on the warm-up's middle, rescaled so it
  starts at exactly 0 and ends at exactly 1;
* ``constant``: ``lam = value`` at every step (``value = 1`` is immediate quantization).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from .base import QuantLayer
from .quantizers import check_lambda

ScheduleKind = Literal["linear", "exponential", "sigmoid", "constant"]
SCHEDULE_KINDS: tuple[str, ...] = ("linear", "exponential", "sigmoid", "constant")


@dataclass(frozen=True, kw_only=True)
class LambdaSchedule:
    """How lam evolves with the training step.

    Attributes:
        kind: one of ``linear``, ``exponential``, ``sigmoid``, ``constant``.
        warmup_frac: fraction of the total steps over which lam rises to 1 (``lambda_warmup_frac``).
        k: shape of the exponential and sigmoid curves.
        value: lam of the ``constant`` schedule.
    """

    kind: ScheduleKind = "linear"
    warmup_frac: float = 0.4
    k: float = 5.0
    value: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(
                f"schedule kind must be one of {', '.join(SCHEDULE_KINDS)}, got {self.kind!r}"
            )
        if not 0.0 <= self.warmup_frac <= 1.0:
            raise ValueError(f"lambda_warmup_frac must be in [0, 1], got {self.warmup_frac}")
        if self.k <= 0:
            raise ValueError(f"schedule k must be > 0, got {self.k}")
        check_lambda(self.value, "schedule value")

    def at(self, step: int, total_steps: int) -> float:
        """lam at ``step`` (0-based) of a run of ``total_steps`` steps."""
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        if self.kind == "constant":
            return self.value
        warmup_steps = self.warmup_frac * total_steps
        if warmup_steps <= 0:
            return 1.0
        t = min(max(step, 0) / warmup_steps, 1.0)
        if self.kind == "linear":
            return t
        if self.kind == "exponential":
            return 1.0 - (1.0 - t) ** self.k

        def logistic(u: float) -> float:
            return 1.0 / (1.0 + math.exp(-self.k * (u - 0.5)))

        low, high = logistic(0.0), logistic(1.0)
        return min(max((logistic(t) - low) / (high - low), 0.0), 1.0)


def quant_layers(model: nn.Module) -> list[QuantLayer]:
    """Every quantized layer of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, QuantLayer)]


def set_quant_lambda(model: nn.Module, lam: float, *, eval_lambda: float | None = 1.0) -> int:
    """Set the training blend ``lam`` (and the evaluation rule) on every quantized layer.

    Returns the number of layers set. ``eval_lambda=None`` makes evaluation use ``lam`` too.
    """
    lam = check_lambda(lam)
    if eval_lambda is not None:
        eval_lambda = check_lambda(eval_lambda, "eval_lambda")
    layers = quant_layers(model)
    for layer in layers:
        layer.quant_lambda = lam
        layer.eval_lambda = eval_lambda
    return len(layers)


# The lam blend is a BitNet device ("Fine-tuning LLMs to 1.58bit"): by default it reaches the
# ternary layers only. LSQ's stage 1 is pure LSQ (seed 002) and a learned bit-width is quantized
# from the start (seed 000), so those layers quantize fully unless a schedule names them.
DEFAULT_APPLIES_TO: tuple[str, ...] = ("ternary", "hadamard")


def in_schedule_scope(layer: QuantLayer, applies_to: Sequence[str]) -> bool:
    """Whether the lam schedule reaches ``layer``: ``"all"`` or its ``scheme_name`` is listed.

    (A ``hadamard`` model's projections outside ``hadamard_layers`` are ``ternary`` layers.)
    """
    return "all" in applies_to or layer.scheme_name in applies_to


def apply_lambda_schedule(
    model: nn.Module,
    schedule: LambdaSchedule,
    step: int,
    total_steps: int,
    *,
    applies_to: Sequence[str] = DEFAULT_APPLIES_TO,
) -> float:
    """Set lam from ``schedule`` at ``step`` on the layers in scope; the others get lam = 1.

    Args:
        applies_to: scheme names of the layers the blend reaches (``schedule.applies_to``), or
            ``("all",)``; every other quantized layer quantizes fully at every step.

    Returns:
        The lam the scoped layers got; 1.0 when the model's quantized layers are all out of scope
        (what they train at); the schedule's value when the model has no quantized layer.
    """
    lam = schedule.at(step, total_steps)
    layers = quant_layers(model)
    scoped = 0
    for layer in layers:
        inside = in_schedule_scope(layer, applies_to)
        scoped += inside
        layer.set_quant_lambda(lam if inside else 1.0)
        layer.eval_lambda = 1.0
    if layers and not scoped:
        return 1.0
    return lam
