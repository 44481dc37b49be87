"""The contract every registered quantization scheme keeps, checked on a small MLP.

Train-mode forward/backward gives finite gradients; ``convert`` computes what the fake-quantized
model computes in evaluation; lam = 0 is the float model; ``dequantize`` gives plain layers back;
an unknown option is refused by name; a recipe quantizes new layers the same way. The run
config's ``quant`` section is the scheme's own options type: same defaults, same bounds (checked
in one place, the options dataclass), unknown keys refused naming the scheme and what it takes.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import typing

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from pydantic import ValidationError
from torch import nn

from trainables.config import ConfigError, RunConfig
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
from trainables.quant.registry import get_scheme
from trainables.quant_config import COMMON_KEYS, QuantConfig, section_type

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


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_config_section_is_the_options_type(scheme: str) -> None:
    entry = get_scheme(scheme)
    section = QuantConfig.model_validate({"scheme": scheme})
    assert type(section) is section_type(scheme)
    assert tuple(section.option_values()) == entry.option_names()
    assert set(type(section).model_fields) == {*COMMON_KEYS, *entry.option_names()}
    # the config's defaults are the dataclass's: no second copy to drift
    assert section.options() == entry.options_type()
    # it round-trips through the run config's flat form and its YAML (json) dump
    cfg = RunConfig.from_dict({"quant": {"scheme": scheme}})
    assert RunConfig.from_flat(cfg.to_flat()) == cfg
    assert RunConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # the section type is found by name (Ray)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_unknown_config_key_names_the_scheme_and_what_it_takes(scheme: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"quant": {"scheme": scheme, "bogus_option": 1}})
    assert [key for key, _ in info.value.problems] == ["quant.bogus_option"]
    message = str(info.value)
    assert f"not an option of quant.scheme {scheme!r}" in message
    assert f"takes: {', '.join((*COMMON_KEYS, *get_scheme(scheme).option_names()))}" in message


def _candidates(hint: object) -> st.SearchStrategy[object]:
    """Values of an options field's own type, around and beyond any plausible bound."""
    args = set(typing.get_args(hint)) or {hint}
    strategies: list[st.SearchStrategy[object]] = []
    if int in args:
        strategies.append(st.integers(-2, 20))
    if float in args:
        strategies.append(st.floats(-1.0, 20.0, allow_nan=False))
    if bool in args:
        strategies.append(st.booleans())
    if type(None) in args and strategies:
        strategies.append(st.none())
    return st.one_of(strategies) if strategies else st.nothing()


@pytest.mark.parametrize("scheme", SCHEMES)
@given(data=st.data())
def test_config_bounds_are_the_options_types_bounds(scheme: str, data: st.DataObject) -> None:
    entry = get_scheme(scheme)
    hints = typing.get_type_hints(entry.options_type)
    fields = [f.name for f in dataclasses.fields(entry.options_type)]
    numeric = [f for f in fields if not _candidates(hints[f]).is_empty]
    if not numeric:
        return
    values = {f: data.draw(_candidates(hints[f]), label=f) for f in numeric}
    try:
        entry.options_type(**values)
        accepted_by_options = True
    except ValueError:
        accepted_by_options = False
    try:
        QuantConfig.model_validate({"scheme": scheme, **values})
        accepted_by_config = True
    except ValidationError:
        accepted_by_config = False
    assert accepted_by_config == accepted_by_options, values
