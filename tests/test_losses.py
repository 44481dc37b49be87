"""The quantization MSE term (lambda_q of BitSkip)."""

from __future__ import annotations

import torch
from torch import nn

from trainables.quant import prepare, quantization_mse, ternary_dequantize


def test_mse_is_mean_of_layer_errors_and_differentiable() -> None:
    model = prepare(
        nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 2)), "ternary"
    )
    layers = [model[0], model[1]]
    expected = torch.stack(
        [(m.weight - ternary_dequantize(m.weight)).pow(2).mean() for m in layers]
    ).mean()
    loss = quantization_mse(model)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in layers)
    assert model[2].weight.grad is None


def test_mse_zero_on_weights_at_their_levels_and_without_quant_layers() -> None:
    model = prepare(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1)), "ternary")
    with torch.no_grad():
        # every |w| = 0.5, so mean|W| = 0.5 and each weight sits exactly on a level
        model[0].weight.copy_((torch.randint(0, 2, (8, 8)).float() * 2 - 1) * 0.5)
    assert quantization_mse(model).item() == 0.0
    with torch.no_grad():
        model[0].weight[0, 0] = 0.2
    assert quantization_mse(model).item() > 0.0
    assert quantization_mse(nn.Linear(4, 4)).item() == 0.0


def test_descent_on_mse_reduces_it() -> None:
    model = prepare(nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 2)), "ternary")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = quantization_mse(model).item()
    for _ in range(100):
        opt.zero_grad()
        quantization_mse(model).backward()
        opt.step()
    assert quantization_mse(model).item() < 0.5 * start


def test_recorded_errors_equal_direct_computation_and_are_cleared() -> None:
    from trainables.quant import record_quant_errors

    model = prepare(
        nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 2)), "ternary"
    )
    record_quant_errors(model)
    model(torch.randn(3, 16))
    recorded = quantization_mse(model, recorded=True)
    torch.testing.assert_close(recorded, quantization_mse(model))
    recorded.backward()
    assert model[0].weight.grad is not None
    assert quantization_mse(model, recorded=True).item() == 0.0  # cleared: nothing recorded since
    record_quant_errors(model, enabled=False)
    model(torch.randn(3, 16))
    assert model[0].recorded_quant_error is None
