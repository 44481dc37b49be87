"""The run config: sections, flat dotted keys, validation messages that name the key."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from trainables.config import ConfigError, RunConfig, flatten, unflatten


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
        ({"quant": {"weight_bits": 9}}, "quant.weight_bits", "less than or equal to 8"),
        ({"train": {"steps": "many"}}, "train.steps", "valid integer"),
        ({"train": {"lr": -1}}, "train.lr", "greater than 0"),
        ({"quant": {"scheme": "int3"}}, "quant.scheme", "must be one of"),
        ({"schedule": {"kind": "cosine"}}, "schedule.kind", "'linear'"),
        ({"loss": {"lambda_br": -0.5}}, "loss.lambda_br", "greater than or equal to 0"),
        ({"loss": {"lambda_r": 0.1}}, "loss.lambda_r", "model.early_exit"),
        ({"loss": {"lambda_br": 1.0}}, "loss.lambda_br", "lsq"),
        ({"loss": {"bit_loss_weight": 1.0}}, "loss.bit_loss_weight", "adaptive"),
        ({"task": {"kind": "vision"}}, "model.arch", "conv"),
        ({"model": {"d_model": 64, "n_heads": 3}}, "model", "n_heads=3"),
        ({"quant": {"min_bits": 6, "max_bits": 4}}, "quant", "min_bits=6"),
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
