"""Activation memory of a training step: the bytes of the tensors autograd saves for backward.

Seed 004 compares reversible bit LM blocks with standard ones by the memory their training step
keeps for backward ("reversible memory against depth"). The loop measures one micro-batch per run
(``perf/saved_activation_mib`` in the first report, see :mod:`trainables.train_step`): the hooks
cost a Python call per saved tensor, so every other step runs without them.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

import torch
from torch import Tensor

MIB = 2**20


class SavedTensorMeter:
    """Counts the bytes autograd saves for backward while the context is open.

    Each distinct storage counts once with its full size (``untyped_storage().nbytes()``: a view
    keeps its whole base alive). Storages of ``exclude`` (the model's parameters and buffers)
    are not activations: they are resident whether or not a step runs, so they are skipped.
    Tensors saved under an inner ``saved_tensors_hooks`` (non-reentrant gradient checkpointing)
    are that context's and are not seen: only the innermost pair of hooks applies.
    """

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self.bytes = 0
        # (device, address): storages on different devices may share an address
        self._seen: set[tuple[str, int]] = set()
        for tensor in exclude:
            storage = _storage(tensor)
            if storage is not None:
                self._seen.add((str(tensor.device), storage.data_ptr()))
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    @property
    def mib(self) -> float:
        """The bytes counted so far, in MiB."""
        return self.bytes / MIB

    def _pack(self, tensor: Tensor) -> Tensor:
        storage = _storage(tensor)
        if storage is None:  # no plain storage (e.g. sparse): its elements, counted each time
            self.bytes += tensor.numel() * tensor.element_size()
        elif (key := (str(tensor.device), storage.data_ptr())) not in self._seen:
            self._seen.add(key)
            self.bytes += storage.nbytes()
        # a detached alias, not the tensor itself: returning a saved output as is would make a
        # reference cycle through its grad_fn (torch.autograd.graph.saved_tensors_hooks)
        return tensor.detach()

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._hooks.__exit__(kind, error, traceback)


def _storage(tensor: Tensor) -> torch.UntypedStorage | None:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor's shard
    try:
        return local.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None


def _unpack(tensor: Tensor) -> Tensor:
    return tensor
