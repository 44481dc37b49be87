"""Step-size control of LSQ models (trainables/quant/step_size.py): listing, freezing (seed 002's
``--freeze-alpha``), unfreezing and the explicit initialization from a chosen batch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.quant import (
    LSQLinear,
    LSQQuantizer,
    alpha_frozen,
    freeze_alpha,
    initialize_step_sizes,
    prepare,
    step_size_parameters,
    unfreeze_alpha,
    weight_bin_regularization,
)


def _mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def _lsq_mlp() -> nn.Sequential:
    # W2A2 on both hidden layers; the head stays a plain nn.Linear (prepare's keep_head)
    return prepare(_mlp(), "lsq", first_last="same", weight_bits=2, act_bits=2)


def test_step_size_parameters_lists_every_step_in_module_order() -> None:
    model = _lsq_mlp()
    steps = step_size_parameters(model)
    quantizers = [m for m in model.modules() if isinstance(m, LSQQuantizer)]
    assert len(steps) == len(quantizers) == 4  # weight + activation step of two layers
    assert all(s is q.step for s, q in zip(steps, quantizers, strict=True))
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(s)] for s in steps] == [
        "0.weight_quantizer.step",
        "0.act_quantizer.step",
        "2.weight_quantizer.step",
        "2.act_quantizer.step",
    ]


def test_a_model_without_lsq_has_no_steps_and_is_never_frozen() -> None:
    model = prepare(_mlp(), "ternary")
    assert step_size_parameters(model) == []
    assert freeze_alpha(model) == 0 and unfreeze_alpha(model) == 0
    assert not alpha_frozen(model)  # "none learnable" of no steps is not a frozen model


def test_weight_only_lsq_lists_only_weight_steps() -> None:
    model = nn.Sequential(LSQLinear(8, 4, weight_bits=3, act_bits=None))
    (step,) = step_size_parameters(model)
    assert step is model[0].weight_quantizer.step


def test_freeze_alpha_leaves_step_sizes_unchanged() -> None:
    model = prepare(_mlp(), "lsq", first_last="same", weight_bits=2, act_bits=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))

    def train_step() -> None:
        loss = nn.functional.cross_entropy(model(x), y) + weight_bin_regularization(model)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: steps learn, and AdamW builds momentum for them
        train_step()
    steps = step_size_parameters(model)
    assert len(steps) == 4 and not alpha_frozen(model)
    assert freeze_alpha(model) == 4 and alpha_frozen(model)
    before = [p.detach().clone() for p in steps]
    weight_before = model[2].weight.detach().clone()
    for _ in range(3):
        train_step()
    assert all(torch.equal(p, b) for p, b in zip(steps, before, strict=True))
    assert all(p.grad is None for p in steps)
    assert not torch.equal(model[2].weight, weight_before)  # the rest still trains
    unfreeze_alpha(model)
    train_step()
    assert not all(torch.equal(p, b) for p, b in zip(steps, before, strict=True))


def test_a_partly_frozen_model_is_not_frozen() -> None:
    model = _lsq_mlp()
    freeze_alpha(model)
    step_size_parameters(model)[0].requires_grad_(True)
    assert not alpha_frozen(model)
    assert unfreeze_alpha(model) == 4 and all(p.requires_grad for p in step_size_parameters(model))


def test_initialize_step_sizes_from_a_chosen_batch_keeps_lambda() -> None:
    model = prepare(_mlp(), "lsq", first_last="same", weight_bits=2, act_bits=2)
    for layer in (model[0], model[2]):
        layer.set_quant_lambda(0.0)  # a lam schedule starting at 0 would never initialize them
    x = torch.randn(32, 8)
    assert initialize_step_sizes(model, lambda: model(x)) == 4
    assert model[0].quant_lambda == 0.0 and model[0].eval_lambda == 1.0
    expected = 2 * x.abs().mean() / math.sqrt(1)  # signed 2-bit input: Q_P = 1
    torch.testing.assert_close(model[0].act_quantizer.step.detach(), expected)
    assert model[0].act_quantizer.step.grad is None


def test_initialize_step_sizes_keeps_steps_already_initialized() -> None:
    """A resumed or already calibrated model keeps its steps: only missing ones are set."""
    model = _lsq_mlp()
    x = torch.randn(32, 8)
    initialize_step_sizes(model, lambda: model(x))
    with torch.no_grad():
        model[0].act_quantizer.step.fill_(0.123)
    assert initialize_step_sizes(model, lambda: model(torch.randn(32, 8) * 10)) == 4
    assert model[0].act_quantizer.step.item() == pytest.approx(0.123)


def test_initialize_step_sizes_restores_lambda_when_the_forward_fails() -> None:
    model = _lsq_mlp()
    model[2].set_quant_lambda(0.25)

    def broken() -> None:
        raise RuntimeError("calibration batch failed")

    with pytest.raises(RuntimeError, match="calibration"):
        initialize_step_sizes(model, broken)
    assert model[2].quant_lambda == 0.25 and model[2].eval_lambda == 1.0
    assert initialize_step_sizes(model, lambda: None) == 0  # nothing ran: nothing initialized
