"""The saved-tensor meter: distinct storages once, weights skipped, gradients and memory intact."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from trainables.activation_memory import MIB, SavedTensorMeter

FLOAT = 4  # bytes of a float32


def _graph(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    y = x.exp()  # saves its output y
    z = y * y  # saves y twice: one storage
    w = y[:10].sin()  # saves a view of y: y's storage again
    v = other[:10].sin()  # saves a view of other: other's whole storage
    return z.sum() + w.sum() + v.sum()


def test_each_distinct_storage_counts_once_with_its_full_size() -> None:
    x = torch.randn(1000, requires_grad=True)
    other = torch.randn(500, requires_grad=True)
    with SavedTensorMeter() as meter:
        loss = _graph(x, other)
    assert meter.bytes == FLOAT * (1000 + 500)
    assert meter.mib == meter.bytes / MIB
    loss.backward()  # the graph still differentiates, to the unmetered gradients
    grads = x.grad.clone(), other.grad.clone()
    x.grad = other.grad = None
    _graph(x, other).backward()
    torch.testing.assert_close(grads, (x.grad, other.grad))


def test_the_excluded_weights_are_not_counted() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(100, 50)
    inputs = torch.randn(8, 100, requires_grad=True)  # a hidden state: its gradient needs W
    with SavedTensorMeter() as everything:
        layer(inputs).sum().backward()
    with SavedTensorMeter(exclude=layer.parameters()) as activations:
        layer(inputs).sum().backward()
    assert activations.bytes == FLOAT * 8 * 100  # the input, saved for W's gradient
    assert everything.bytes == activations.bytes + FLOAT * 50 * 100  # and the weight


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("no_collector")
def test_a_saved_output_is_freed_without_the_garbage_collector() -> None:
    """Packing a saved output as is would keep it (and its graph) alive in a reference cycle."""
    x = torch.randn(100, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = x.exp()  # exp saves its own output
    assert meter.bytes == FLOAT * 100
    alive = weakref.ref(y)
    del y
    assert alive() is None
