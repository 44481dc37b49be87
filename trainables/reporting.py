"""How a training loop hands out metrics and checkpoints, without knowing who listens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

# Writes a complete checkpoint into the (existing, empty) directory it is given.
CheckpointWriter = Callable[[Path], None]


class Reporter(Protocol):
    """Receives a flat metrics dict at every evaluation, with a checkpoint writer when one is due.

    The names are those declared in :mod:`trainables.metric_names` (a contract test checks it).

    The Ray Train worker's reporter calls ``ray.train.report``; the Tune function trainable's calls
    ``ray.tune.report``; tests use :class:`ListReporter`.
    """

    def report(self, metrics: dict[str, float], checkpoint: CheckpointWriter | None) -> None:
        """Publish ``metrics``; if ``checkpoint`` is given, persist what it writes."""
        ...


class ListReporter:
    """Keeps every report in memory and writes checkpoints into ``checkpoint_root/step_N``."""

    def __init__(self, checkpoint_root: Path | None = None) -> None:
        self.metrics: list[dict[str, float]] = []
        self.checkpoints: list[Path] = []
        self.checkpoint_root = checkpoint_root

    def report(self, metrics: dict[str, float], checkpoint: CheckpointWriter | None) -> None:
        """Record ``metrics`` and, with a checkpoint root, write the checkpoint."""
        self.metrics.append(dict(metrics))
        if checkpoint is not None and self.checkpoint_root is not None:
            path = self.checkpoint_root / f"step_{int(metrics['step']):08d}"
            path.mkdir(parents=True, exist_ok=False)
            checkpoint(path)
            self.checkpoints.append(path)

    @property
    def last(self) -> dict[str, float]:
        """The latest metrics reported."""
        return self.metrics[-1]
