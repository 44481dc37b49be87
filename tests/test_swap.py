"""The swap pass and registry: prepare, convert, dequantize, recipes, errors."""

from __future__ import annotations

import copy

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from torch import nn

from trainables.quant import (
    BitLinear,
    HBitLinear,
    QuantLayer,
    TernaryLinear,
    apply_recipe,
    available_schemes,
    convert,
    dequantize,
    get_scheme,
    prepare,
    quant_recipe,
)

TERNARY_SCHEMES = ["ternary", "hadamard"]
ALL: dict[str, dict[str, object]] = {"hadamard": {"hadamard_layers": "all"}}  # no o_proj here


class TinyNet(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, width)
        self.body = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.head = nn.Linear(width, 10)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(idx)))


def test_builtin_schemes_registered() -> None:
    assert {"none", "ternary", "hadamard"} <= set(available_schemes())


def test_unknown_scheme_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown quantization scheme 'int3'.*ternary"):
        prepare(TinyNet(), "int3")


def test_unknown_option_is_named() -> None:
    with pytest.raises(ValueError, match=r"act_bitz.*valid options: .*act_bits"):
        prepare(TinyNet(), "ternary", act_bitz=4)


@pytest.mark.parametrize(("scheme", "cls"), [("ternary", BitLinear), ("hadamard", HBitLinear)])
def test_prepare_keeps_embedding_and_head(scheme: str, cls: type) -> None:
    model = prepare(TinyNet(), scheme, **ALL.get(scheme, {}))
    assert isinstance(model.embed, nn.Embedding)
    assert type(model.head) is nn.Linear
    assert all(isinstance(model.body[i], cls) for i in (0, 2))
    recipe = quant_recipe(model)
    assert recipe is not None and recipe.scheme == scheme and recipe.keep_head


def test_prepare_can_quantize_head_and_exclude() -> None:
    model = prepare(TinyNet(), "ternary", keep_head=False, exclude=["body.0"])
    assert isinstance(model.head, BitLinear)
    assert type(model.body[0]) is nn.Linear and isinstance(model.body[2], BitLinear)


def test_none_scheme_changes_nothing() -> None:
    model = TinyNet()
    before = copy.deepcopy(model.state_dict())
    prepare(model, "none")
    assert not any(isinstance(m, QuantLayer) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_prepare_is_idempotent_on_quantized_layers() -> None:
    model = prepare(TinyNet(), "ternary")
    layer = model.body[0]
    prepare(model, "hadamard")
    assert model.body[0] is layer


@pytest.mark.parametrize("scheme", TERNARY_SCHEMES)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 4))
def test_convert_matches_fake_quantization(scheme: str, seed: int, batch: int) -> None:
    torch.manual_seed(seed)
    model = prepare(TinyNet(), scheme, **ALL.get(scheme, {})).eval()
    idx = torch.randint(0, 10, (batch, 6))
    fake = model(idx)
    deployed = convert(copy.deepcopy(model))
    assert not any(isinstance(m, QuantLayer) for m in deployed.modules())
    assert sum(isinstance(m, TernaryLinear) for m in deployed.modules()) == 2
    torch.testing.assert_close(deployed(idx), fake, atol=1e-5, rtol=0)


def test_converted_model_holds_less_memory() -> None:
    model = prepare(TinyNet(width=256), "ternary")
    deployed = convert(copy.deepcopy(model))

    def linear_weight_bytes(m: nn.Module) -> int:
        total = 0
        for layer in m.body:
            if isinstance(layer, TernaryLinear):
                total += layer.codes.numel() * layer.codes.element_size()
            elif isinstance(layer, nn.Linear):
                total += layer.weight.numel() * layer.weight.element_size()
        return total

    assert linear_weight_bytes(deployed) * 4 == linear_weight_bytes(model)


def test_dequantize_and_apply_recipe_round_trip() -> None:
    model = prepare(TinyNet(), "hadamard", act_bits=4, hadamard_layers="all")
    weights = model.body[0].to_linear().weight.detach().clone()
    dequantize(model)
    assert type(model.body[0]) is nn.Linear
    torch.testing.assert_close(model.body[0].weight, weights)
    block = apply_recipe(nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 32)), quant_recipe(model))
    assert all(isinstance(m, HBitLinear) and m.act_bits == 4 for m in block)


def test_bare_linear_is_replaced() -> None:
    # a bare layer has no head to keep: it is quantized either way
    assert isinstance(prepare(nn.Linear(16, 16), "ternary", keep_head=False), BitLinear)
    assert isinstance(prepare(nn.Linear(16, 16), "ternary"), BitLinear)


def test_hadamard_error_names_the_layer() -> None:
    model = nn.Sequential(nn.Linear(12, 16), nn.Linear(16, 4))
    with pytest.raises(ValueError, match=r"layer '0'.*in_features=12"):
        prepare(model, "hadamard", hadamard_layers="all")


def test_scheme_options_validated() -> None:
    with pytest.raises(ValueError, match="act_bits"):
        get_scheme("ternary").make_options({"act_bits": 99})
    with pytest.raises(ValueError, match="block_size"):
        get_scheme("hadamard").make_options({"block_size": 24})


def test_layer_context_marks_the_models_first_and_last_layers() -> None:
    from trainables.quant import LayerContext, Scheme, register_scheme
    from trainables.quant.registry import _SCHEMES
    from trainables.quant.schemes.none import NoneOptions

    seen: list[LayerContext] = []
    scheme = Scheme("spy", "records contexts", NoneOptions, lambda m, c, o: seen.append(c))
    register_scheme(scheme)
    try:
        prepare(TinyNet(), "spy")
        assert [(c.name, c.is_first, c.is_last) for c in seen] == [
            ("body.0", True, False),
            ("body.2", False, False),
        ]
        seen.clear()
        prepare(TinyNet(), "spy", keep_head=False)
        assert [(c.name, c.is_last) for c in seen][-1] == ("head", True)
    finally:
        del _SCHEMES["spy"]
