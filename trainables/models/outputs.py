"""The output contract every bitsweep model returns, consumed by the training loop."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ModelOutput:
    """What a model's ``forward`` returns.

    The training loop sums ``task_loss`` with whichever ``aux_losses`` the run config enables,
    each multiplied by its own weight (``lambda_r`` for ``"route"``, the early-exit weight for
    ``"exit"``).
    Terms the model was not configured for are simply absent, so a disabled term costs nothing.

    Attributes:
        logits: final-layer logits, ``[B, T, V]`` for language models, ``[B, C]`` for classifiers
            (an early-exit byte LM returns each token's logits at its exit: the sampled one in
            training with ``exit_task_loss: sampled``, the one its gates chose at inference).
        task_loss: mean cross-entropy of ``logits`` against the targets; ``None`` when no
            targets were given.
        aux_losses: raw (unweighted) scalar loss terms keyed by their short name (``"route"``,
            ``"exit"``); they keep autograd.
        metrics: detached Python scalars for reporting, keyed by their metric-contract name
            (for example ``"route/expected_exit"``).
    """

    logits: Tensor
    task_loss: Tensor | None = None
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
