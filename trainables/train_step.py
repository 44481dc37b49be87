"""One optimizer step's gradient work: micro-batches, mixed precision, the pre-clip norm.

Seed 003's knobs: ``train.grad_accum`` micro-batches per optimizer step (each loss divided by
their number, so the gradient is that of the mean over all of them: accumulating 2 batches of b
equals one batch of 2b), ``train.precision: bf16`` (autocast; CPU autocast on a CPU device) and
``train/grad_norm``, the total gradient norm before clipping. On request it also measures the
activation memory of the first micro-batch (:mod:`trainables.activation_memory`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from trainables.activation_memory import SavedTensorMeter
from trainables.objective import TrainingObjective, check_finite


@dataclass
class StepResult:
    """Mean values over the micro-batches of one step: losses, terms and the model's metrics."""

    losses: dict[str, float] = field(default_factory=dict)  # "train/loss" and loss terms
    metrics: dict[str, float] = field(default_factory=dict)  # the model's own step metrics
    samples: int = 0
    # bytes autograd saved for backward in the first micro-batch, when measured
    saved_activation_bytes: int | None = None


def autocast(precision: str, device: torch.device) -> AbstractContextManager[None]:
    """``torch.autocast`` to bfloat16 for ``"bf16"`` (on the device's type), else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def accumulate_gradients(
    wrapped: nn.Module,
    objective: TrainingObjective,
    micro_batches: Sequence[tuple[Tensor, Tensor]],
    step: int,
    *,
    precision: str = "fp32",
    measure_activations: bool = False,
) -> StepResult:
    """Forward and backward every micro-batch, adding ``loss / len(micro_batches)`` gradients.

    A DDP-wrapped model synchronizes only on the last micro-batch (``no_sync``). Raises the
    objective's ``LossDivergedError`` on a non-finite loss. With ``measure_activations`` the
    forward of the first micro-batch (model and loss terms) runs under a
    :class:`SavedTensorMeter`, whose count lands in ``saved_activation_bytes``; backward runs
    outside it, so a reversible stack's recomputation (freed block by block) is not counted.
    """
    count = len(micro_batches)
    result = StepResult()
    device = micro_batches[0][0].device
    for index, (x, y) in enumerate(micro_batches):
        last = index == count - 1
        no_sync = getattr(wrapped, "no_sync", None)
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            objective.begin_step(step)
            meter = _meter(wrapped) if measure_activations and index == 0 else None
            with meter or contextlib.nullcontext(), autocast(precision, device):
                out = wrapped(x, targets=y)
                total, terms = objective(out, step)
            if meter is not None:
                result.saved_activation_bytes = meter.bytes
            check_finite(total, terms, step)
            (total / count).backward()
        _add(result.losses, {"train/loss": total, **terms}, count)
        _add(result.metrics, out.metrics, count)
        result.samples += x.shape[0]
    return result


def _meter(wrapped: nn.Module) -> SavedTensorMeter:
    # weights and buffers stay resident whatever the step saves: not activation memory
    return SavedTensorMeter(exclude=[*wrapped.parameters(), *wrapped.buffers()])


def _add(into: dict[str, float], values: dict[str, object], count: int) -> None:
    for name, value in values.items():
        number = float(value.detach()) if isinstance(value, Tensor) else float(value)  # type: ignore[arg-type]
        into[name] = into.get(name, 0.0) + number / count


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float | None) -> float:
    """Clip the total gradient norm to ``max_norm`` (None: no clipping); returns it before."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    if max_norm is None:  # measure only: gradients stay untouched
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    full = getattr(norm, "full_tensor", None)  # a DTensor under FSDP2
    return float(full() if callable(full) else norm)
