"""The contract every registered quantization scheme keeps, checked on a small MLP.

Train-mode forward/backward gives finite gradients; ``convert`` computes what the fake-quantized
model computes in evaluation; lam = 0 is the float model; ``dequantize`` gives plain layers back;
an unknown option is refused by name; a recipe quantizes new layers the same way.
"""

from __future__ import annotations

import copy

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from torch import nn

from trainables.quant import (
    QuantLayer,
    apply_recipe,
    available_schemes,
    convert,
    dequantize,
    prepare,
    quant_recipe,
    quantization_mse,
    record_quant_errors,
    set_quant_lambda,
)

SCHEMES = available_schemes()
# the hadamard scheme on a model without o_proj / down_proj: H-BitLinear everywhere
OPTIONS: dict[str, dict[str, object]] = {"hadamard": {"hadamard_layers": "all"}}


def _mlp() -> nn.Sequential:
    # in_features are powers of two (>= 8) so that the hadamard scheme applies to every layer
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)
    )


def test_the_known_schemes_are_registered() -> None:
    assert {"none", "ternary", "hadamard", "lsq", "adaptive"} <= set(SCHEMES)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_train_mode_forward_backward_gives_finite_gradients(scheme: str) -> None:
    model = prepare(_mlp(), scheme, **OPTIONS.get(scheme, {})).train()
    out = model(torch.randn(8, 16))
    assert out.shape == (8, 8) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.randint(0, 8, (8,))).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    quantized = [m for m in model.modules() if isinstance(m, QuantLayer)]
    assert (len(quantized) == 0) == (scheme == "none")
    assert all(m.weight.grad.abs().sum() > 0 for m in quantized)


@pytest.mark.parametrize("scheme", SCHEMES)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 5))
def test_convert_equals_fake_quantized_evaluation(scheme: str, seed: int, batch: int) -> None:
    torch.manual_seed(seed)
    model = prepare(_mlp(), scheme, **OPTIONS.get(scheme, {})).train()
    model(torch.randn(16, 16))  # a training batch (initializes data-dependent state, e.g. LSQ)
    model.eval()
    x = torch.randn(batch, 16)
    fake = model(x)
    deployed = convert(copy.deepcopy(model))
    assert not any(isinstance(m, QuantLayer) for m in deployed.modules())
    assert not deployed.training
    torch.testing.assert_close(deployed(x), fake, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_lambda_zero_is_the_float_model(scheme: str) -> None:
    reference = _mlp()
    model = prepare(copy.deepcopy(reference), scheme, **OPTIONS.get(scheme, {}))
    set_quant_lambda(model, 0.0, eval_lambda=None)
    x = torch.randn(6, 16)
    for mode in (True, False):
        reference.train(mode)
        model.train(mode)
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_dequantize_gives_plain_layers_back(scheme: str) -> None:
    reference = _mlp()
    model = prepare(copy.deepcopy(reference), scheme, **OPTIONS.get(scheme, {}))
    model(torch.randn(4, 16))
    dequantize(model)
    assert not any(isinstance(m, QuantLayer) for m in model.modules())
    for i in (0, 2, 4):
        assert type(model[i]) is nn.Linear
        torch.testing.assert_close(model[i].weight, reference[i].weight, atol=1e-5, rtol=0)
        torch.testing.assert_close(model[i].bias, reference[i].bias)
    x = torch.randn(3, 16)
    torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_unknown_options_are_refused_by_name(scheme: str) -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) bogus_option"):
        prepare(_mlp(), scheme, bogus_option=1)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_recipe_quantizes_new_layers_alike(scheme: str) -> None:
    model = prepare(_mlp(), scheme, **OPTIONS.get(scheme, {}))
    recipe = quant_recipe(model)
    assert recipe is not None and recipe.scheme == scheme
    block = apply_recipe(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32)), recipe)
    middle = type(model[2])
    assert type(block[0]) is middle and type(block[2]) is middle
    block(torch.randn(2, 32)).sum().backward()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantization_error_recorded_in_forward_equals_the_recomputed_one(scheme: str) -> None:
    model = prepare(_mlp(), scheme, **OPTIONS.get(scheme, {}))
    record_quant_errors(model)
    model(torch.randn(4, 16))
    recomputed = quantization_mse(model)
    torch.testing.assert_close(quantization_mse(model, recorded=True), recomputed)
    if scheme != "none":
        assert recomputed.item() > 0
