"""Model-wide bit usage and the bit-balanced cross-entropy (seed 000)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.quant import (
    AdaptiveBitLinear,
    BitBalancedCrossEntropy,
    collect_bit_usage,
    compute_total_bit_usage,
    count_trainable_parameters,
    prepare,
)


class FixedCost(nn.Module):
    """Any module with a ``bit_usage()`` method participates."""

    def __init__(self, bits: float) -> None:
        super().__init__()
        self.bits = bits

    def bit_usage(self) -> torch.Tensor:
        return torch.tensor(self.bits)


class Composite(nn.Module):
    """Reports for its whole subtree: its children must not be counted again."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = AdaptiveBitLinear(4, 4, init_bits=4.0)

    def bit_usage(self) -> torch.Tensor:
        return 2 * self.inner.bit_usage()


def _model() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4), nn.Linear(4, 3))
    return prepare(net, "adaptive", init_bits=5.0)  # two adaptive layers, float head


def test_total_and_per_module_usage() -> None:
    model = _model()
    model.add_module("extra", FixedCost(100.0))
    model.add_module("composite", Composite())
    usage = collect_bit_usage(model)
    assert set(usage) == {"0", "2", "extra", "composite"}
    assert usage["0"].item() == 5 * (64 + 8) and usage["2"].item() == 5 * (32 + 4)
    assert usage["composite"].item() == 2 * 4 * 20
    total = compute_total_bit_usage(model)
    assert total.dim() == 0 and total.dtype == torch.float32
    assert total.item() == 5 * 72 + 5 * 36 + 100 + 160
    total.backward()  # keeps autograd down to every bit-width
    assert model[0].bit_width.grad.item() == 72 and model.composite.inner.bit_width.grad == 40


def test_no_reporting_module_gives_zero() -> None:
    total = compute_total_bit_usage(nn.Sequential(nn.Linear(3, 3)))
    assert total.item() == 0.0 and total.device.type == "cpu"
    assert collect_bit_usage(nn.Linear(3, 3)) == {}


def test_loss_before_set_model_raises_a_clear_error() -> None:
    loss_fn = BitBalancedCrossEntropy(weight=0.1)
    with pytest.raises(RuntimeError, match=r"set_model\(model\)"):
        loss_fn(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="bit_loss_weight"):
        BitBalancedCrossEntropy(weight=-1.0)


def test_unnormalized_loss_adds_weight_times_total_bits() -> None:
    model = _model()
    loss_fn = BitBalancedCrossEntropy(weight=0.01).set_model(model)
    logits, targets = torch.randn(6, 3), torch.randint(0, 3, (6,))
    ce = nn.functional.cross_entropy(logits, targets)
    bits = 5 * 72 + 5 * 36
    torch.testing.assert_close(loss_fn(logits, targets), ce + 0.01 * bits)
    torch.testing.assert_close(loss_fn.last_terms["bit_penalty"], torch.tensor(0.01 * bits))
    assert "0.weight" not in loss_fn.state_dict()  # the loss does not own the model


def test_normalized_loss_divides_by_the_trainable_parameter_count() -> None:
    model = _model()
    loss_fn = BitBalancedCrossEntropy(weight=0.5, normalize=True).set_model(model)
    logits, targets = torch.randn(6, 3), torch.randint(0, 3, (6,))
    ce = nn.functional.cross_entropy(logits, targets)
    bits = 5 * 72 + 5 * 36
    trainable = 72 + 36 + 15 + 2  # two layers, the head, two bit-widths
    assert count_trainable_parameters(model) == trainable
    torch.testing.assert_close(loss_fn(logits, targets), ce + 0.5 * bits / trainable)
    model[3].requires_grad_(False)  # freezing the head changes the count
    torch.testing.assert_close(loss_fn(logits, targets), ce + 0.5 * bits / (trainable - 15))


def test_loss_gradient_lowers_the_total_bits() -> None:
    model = _model()
    loss_fn = BitBalancedCrossEntropy(weight=1.0, normalize=True).set_model(model)
    opt = torch.optim.SGD([model[0].bit_width, model[2].bit_width], lr=2.0)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    start = compute_total_bit_usage(model).item()
    loss_fn(model(x), y).backward()
    assert model[0].bit_width.grad.item() > 0 and model[2].bit_width.grad.item() > 0
    for _ in range(5):
        opt.step()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
    assert compute_total_bit_usage(model).item() < start


def test_sequence_logits_are_flattened() -> None:
    model = _model()
    loss_fn = BitBalancedCrossEntropy(weight=0.0).set_model(model)
    logits, targets = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    expected = nn.functional.cross_entropy(logits.reshape(10, 7), targets.reshape(10))
    torch.testing.assert_close(loss_fn(logits, targets), expected)
