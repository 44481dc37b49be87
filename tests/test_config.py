"""The run config: sections, flat dotted keys, validation messages that name the key."""

from __future__ import annotations

from dataclasses import dataclass

import hypothesis.strategies as st
import pytest
from hypothesis import given
from torch import nn

from trainables.config import ConfigError, RunConfig, flatten, unflatten
from trainables.quant import LayerContext, Scheme
from trainables.quant import registry as scheme_registry
from trainables.quant.registry import LEARNABLE_BITS, LEARNED_STEP_SIZES, TERNARY_WEIGHTS
from trainables.quant_config import retarget_document


def test_defaults_round_trip_through_flat_keys() -> None:
    cfg = RunConfig()
    flat = cfg.to_flat()
    assert {"train.steps", "quant.scheme", "loss.lambda_q", "growth.improve_thresh"} <= set(flat)
    assert {key.split(".")[0] for key in flat} == {
        "task", "data", "model", "quant", "schedule", "loss", "growth", "train",
        "telemetry", "diffusion", "distill", "export",
    }  # fmt: skip
    assert RunConfig.from_flat(flat) == cfg


def test_seed_names_are_kept() -> None:
    flat = RunConfig().to_flat()
    for name in (
        "loss.lambda_q", "loss.lambda_r", "loss.target_exit_layer", "loss.lambda_br",
        "loss.lambda_br_act", "loss.br_backprop_to_alpha_act", "loss.freeze_alpha",
        "loss.bit_loss_weight", "loss.bit_loss_normalize", "schedule.lambda_warmup_frac",
        "model.rmsnorm_post_attn", "growth.improve_thresh", "growth.window", "growth.strategy",
        "train.steps", "train.batch_size", "train.lr", "train.eval_every", "train.seed",
    ):  # fmt: skip
        assert name in flat


@given(
    steps=st.integers(1, 10_000),
    lr=st.floats(1e-6, 1.0),
    scheme=st.sampled_from(["none", "ternary", "hadamard"]),
    warmup=st.floats(0.0, 1.0),
)
def test_overrides_round_trip(steps: int, lr: float, scheme: str, warmup: float) -> None:
    overrides = {
        "train.steps": steps,
        "train.lr": lr,
        "quant.scheme": scheme,
        "schedule.lambda_warmup_frac": warmup,
    }
    cfg = RunConfig().with_overrides(overrides)
    assert {k: cfg.to_flat()[k] for k in overrides} == overrides
    assert RunConfig.from_flat(cfg.to_flat()) == cfg


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"quant": {"wieght_bits": 3}}, "quant.wieght_bits", "did you mean 'quant.weight_bits'"),
        ({"trian": {"steps": 3}}, "trian", "did you mean 'train'"),
        ({"quant": {"scheme": "lsq", "weight_bits": 9}}, "quant.weight_bits", "in 2..8, got 9"),
        ({"train": {"steps": "many"}}, "train.steps", "valid integer"),
        ({"train": {"lr": -1}}, "train.lr", "greater than 0"),
        ({"quant": {"scheme": "int3"}}, "quant.scheme", "must be one of"),
        ({"schedule": {"kind": "cosine"}}, "schedule.kind", "'linear'"),
        ({"loss": {"lambda_br": -0.5}}, "loss.lambda_br", "greater than or equal to 0"),
        ({"train": {"eval_at_start": "sometimes"}}, "train.eval_at_start", "valid boolean"),
        ({"loss": {"lambda_r": 0.1}}, "loss.lambda_r", "model.early_exit"),
        ({"loss": {"lambda_br": 1.0}}, "loss.lambda_br", "lsq"),
        ({"loss": {"bit_loss_weight": 1.0}}, "loss.bit_loss_weight", "adaptive"),
        ({"task": {"kind": "vision"}}, "model.arch", "conv"),
        ({"model": {"d_model": 64, "n_heads": 3}}, "model", "n_heads=3"),
        (
            {"quant": {"scheme": "adaptive", "min_bits": 6, "max_bits": 4}},
            "quant.min_bits",
            "min_bits must be <= max_bits",
        ),
        (
            {"task": {"kind": "vision"}, "model": {"arch": "mlp"}, "data": {"source": "cifar10"}},
            "data.path",
            "data_batch_1",
        ),
    ],
)
def test_invalid_configs_name_the_key(data: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(data)
    keys = [k for k, _ in info.value.problems]
    assert key in keys, info.value
    assert fragment in str(info.value)


def test_unknown_override_key_suggests() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'train\.steps'"):
        RunConfig().with_overrides({"train.step": 3})


@given(
    st.dictionaries(st.from_regex(r"[a-z]{1,4}(\.[a-z]{1,4}){0,2}", fullmatch=True), st.integers())
)
def test_flatten_inverts_unflatten(flat: dict[str, int]) -> None:
    keys = sorted(flat)
    # a key that is also a prefix of another cannot be both a value and a section
    if any(b.startswith(a + ".") for a in keys for b in keys):
        return
    assert flatten(unflatten(flat)) == flat


def test_growth_order_accepts_a_comma_string() -> None:
    cfg = RunConfig().with_overrides({"growth.strategy": "width, depth"})
    assert cfg.growth.strategy == ("width", "depth")
    with pytest.raises(ConfigError, match=r"growth\.strategy"):
        RunConfig().with_overrides({"growth.strategy": "width,sideways"})


def _problems(data: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(data)
    return dict(info.value.problems)


def test_the_quant_section_is_the_schemes_own_options() -> None:
    # an option of another scheme is an error naming the key, the scheme and what it takes
    problems = _problems({"quant": {"scheme": "ternary", "min_bits": 4, "block_size": 16}})
    assert set(problems) == {"quant.min_bits", "quant.block_size"}
    assert (
        "'ternary'" in problems["quant.block_size"] and "'hadamard'" in problems["quant.block_size"]
    )
    assert "takes: scheme, keep_head, act_bits, input_norm, eps" in problems["quant.min_bits"]
    # cross-field rules of the options type are checked where the section is built
    problems = _problems({"quant": {"scheme": "adaptive", "min_bits": 4, "init_bits": 3}})
    assert list(problems) == ["quant.init_bits"] and "min_bits" in problems["quant.init_bits"]
    problems = _problems({"quant": {"scheme": "hadamard", "block_size": 4}})
    assert "power of two >= 8" in problems["quant.block_size"]
    # every option is a key: eps and quantize_input included
    cfg = RunConfig.from_dict({"quant": {"scheme": "hadamard", "eps": 1e-6, "block_size": 16}})
    assert cfg.quant.option_values()["eps"] == 1e-6
    assert cfg.to_flat()["quant.block_size"] == 16 and "quant.weight_bits" not in cfg.to_flat()
    assert _problems({"quant": {"scheme": "nope"}}).keys() == {"quant.scheme"}


def test_overriding_the_scheme_keeps_the_options_it_takes() -> None:
    base = RunConfig.from_dict({"quant": {"scheme": "ternary", "act_bits": 6, "input_norm": True}})
    lsq = base.with_overrides({"quant.scheme": "lsq", "quant.weight_bits": 3})
    assert lsq.quant.option_values() == {
        "weight_bits": 3, "act_bits": 6, "act_signed": "auto", "first_last": "8bit",
        "layer_bits": None,
    }  # fmt: skip
    hadamard = base.with_overrides({"quant.scheme": "hadamard", "quant.block_size": 16})
    assert hadamard.quant.input_norm and hadamard.quant.block_size == 16
    # a key the (unchanged) scheme does not take is refused, not dropped
    with pytest.raises(ConfigError, match=r"quant\.block_size: not an option of quant\.scheme"):
        base.with_overrides({"quant.block_size": 16})
    # a trial's flat config: the base options plus a searched scheme
    flat = {**base.to_flat(), "quant.scheme": "adaptive"}
    with pytest.raises(ConfigError, match=r"quant\.act_bits"):
        RunConfig.from_flat(flat)
    trial = RunConfig.from_flat(flat, retarget_quant=True)
    assert trial.quant.scheme == "adaptive" and "act_bits" not in trial.quant.option_values()


def test_checks_read_scheme_capabilities_not_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheme registered at run time gets a config section and the checks its capabilities
    allow, with no edit to the config module."""

    @dataclass(frozen=True, kw_only=True)
    class ToyOptions:
        bits: int = 3

        def __post_init__(self) -> None:
            if not 2 <= self.bits <= 4:
                raise ValueError(f"bits must be in 2..4, got {self.bits}")

    def build(module: nn.Module, context: LayerContext, options: ToyOptions) -> None:
        return None

    toy = Scheme("toy_steps", "a test scheme", ToyOptions, build,
                 capabilities=frozenset({LEARNED_STEP_SIZES, LEARNABLE_BITS}))  # fmt: skip
    monkeypatch.setitem(scheme_registry._SCHEMES, toy.name, toy)
    cfg = RunConfig.from_dict(
        {"quant": {"scheme": "toy_steps", "bits": 4},
         "loss": {"lambda_br": 0.1, "freeze_alpha": True, "fn": "bit_balanced_ce"}}
    )  # fmt: skip
    assert cfg.quant.options() == ToyOptions(bits=4)
    assert _problems({"quant": {"scheme": "toy_steps", "bits": 5}}) == {
        "quant.bits": "bits must be in 2..4, got 5"
    }
    problems = _problems({"quant": {"scheme": "toy_steps"}, "export": {"formats": ["gguf-tq2"]}})
    assert "exports ternary models" in problems["export.formats"]
    problems = _problems({"quant": {"scheme": "ternary"}, "loss": {"lambda_br": 0.1}})
    assert "'lsq' or 'toy_steps'" in problems["loss.lambda_br"]
    assert TERNARY_WEIGHTS not in toy.capabilities


def test_a_scheme_override_drops_the_old_schemes_written_options() -> None:
    original = {"quant": {"scheme": "lsq", "weight_bits": 2, "act_bits": 2}}
    switched = {"quant": {"scheme": "ternary", "weight_bits": 2, "act_bits": 2}}
    retarget_document(original, switched, {"quant.scheme": "ternary"})
    assert switched == {"quant": {"scheme": "ternary", "act_bits": 2}}
    # keys given with the switch stay, for the validation to name; no switch drops nothing
    switched = {"quant": {"scheme": "ternary", "weight_bits": 3}}
    retarget_document(original, switched, {"quant.scheme": "ternary", "quant.weight_bits": 3})
    assert switched["quant"]["weight_bits"] == 3
    same = {"quant": {"scheme": "lsq", "block_size": 16}}
    retarget_document(same, same, {"quant.scheme": "lsq"})
    assert "block_size" in same["quant"]


def test_eval_at_start_is_off_unless_asked_for() -> None:
    assert RunConfig().train.eval_at_start is False
    assert RunConfig().with_overrides({"train.eval_at_start": "true"}).train.eval_at_start is True
