"""Progressive growth: function preservation (full precision and quantized), optimizer, LR rule."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from trainables.models import (
    ByteLM,
    ByteLMConfig,
    grow_context,
    grow_depth,
    grow_width,
    growth_lr,
    growth_warmup,
    move_optimizer_to_grown,
    warmup_factor,
)
from trainables.quant import QuantLayer, prepare, quant_recipe, set_quant_lambda

BASE = {"d_model": 32, "n_layers": 2, "n_heads": 2, "seq_len": 16}
VARIANTS = [
    {"ffn": "sqrelu"},
    {"ffn": "gated_sqrelu", "subln": True, "early_exit": True},
    {"ffn": "swiglu", "rmsnorm_post_attn": True, "exit_loss": True},
    {"ffn": "gated_sqrelu", "subln": True, "rmsnorm_post_attn": True, "early_exit": True},
]


def _model(**overrides: object) -> ByteLM:
    model = ByteLM(ByteLMConfig(**{**BASE, **overrides}))  # type: ignore[arg-type]
    model.eval()
    model.exit_at_inference = False  # compare the full-depth function
    return model


def _outputs(model: ByteLM, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and (with early exit) the expected exit per token."""
    with torch.no_grad():
        out = model(idx)
        gate = None
        if model.exit_gates is not None:
            gate = torch.tensor(out.metrics["route/expected_exit"])
    return out.logits, gate


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _rebuilds(model: ByteLM) -> None:
    """The grown config describes the grown model: a fresh model loads its state dict strictly."""
    fresh = ByteLM(model.config)
    if quant_recipe(model) is not None:
        recipe = quant_recipe(model)
        prepare(fresh, recipe.scheme, keep_head=recipe.keep_head, **dict(recipe.options))
    fresh.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "grow",
    [
        pytest.param(lambda m: grow_depth(m), id="depth-top"),
        pytest.param(lambda m: grow_depth(m, 2, position=0), id="depth-bottom-2"),
        pytest.param(lambda m: grow_depth(m, position=1), id="depth-middle"),
        pytest.param(lambda m: grow_width(m), id="width"),
        pytest.param(lambda m: grow_width(m, 3, noise_std=0.05), id="width3-noise"),
        pytest.param(lambda m: grow_context(m), id="context"),
    ],
)
def test_growth_preserves_the_full_precision_function(
    variant: dict, grow: Callable[[ByteLM], ByteLM]
) -> None:
    model = _model(**variant)
    idx = torch.randint(0, 256, (2, 16))
    logits, _ = _outputs(model, idx)
    grown = grow(model)
    new_logits, _ = _outputs(grown, idx)
    torch.testing.assert_close(new_logits, logits, atol=1e-5, rtol=0)
    _rebuilds(grown)
    assert grown is not model


def test_grown_configs_describe_the_new_shape() -> None:
    model = _model(early_exit=True)
    deep = grow_depth(model, 2)
    assert deep.config.n_layers == 4 and len(deep.blocks) == 4 and len(deep.exit_gates) == 3
    wide = grow_width(model)
    assert (wide.config.d_model, wide.config.n_heads, wide.config.d_ff) == (64, 4, 256)
    assert wide.config.head_dim == model.config.head_dim
    assert wide.blocks[0].attn.q_proj.weight.shape == (64, 64)
    long = grow_context(model, seq_len=40)
    assert long.config.seq_len == 40 and long.rope.cos.shape == (40, 16)
    assert model.config.n_layers == 2 and model.config.seq_len == 16  # the original is untouched


def test_width_growth_keeps_gate_probabilities() -> None:
    model = _model(early_exit=True, d_model=24, n_heads=2)  # gate hidden 6 -> 12
    idx = torch.randint(0, 256, (2, 16))
    _, gate = _outputs(model, idx)
    _, new_gate = _outputs(grow_width(model), idx)
    torch.testing.assert_close(new_gate, gate, atol=1e-6, rtol=0)


def test_new_depth_block_starts_at_zero_output_but_learns() -> None:
    model = grow_depth(_model(), position=2)
    new = model.blocks[2]
    assert float(new.attn.o_proj.weight.detach().abs().sum()) == 0.0
    assert float(new.ffn.down_proj.weight.detach().abs().sum()) == 0.0
    assert float(new.attn.q_proj.weight.detach().abs().sum()) > 0.0
    model.train()
    idx = torch.randint(0, 256, (2, 16))
    model(idx, idx).task_loss.backward()
    assert float(new.attn.o_proj.weight.grad.abs().sum()) > 0.0
    post = grow_depth(_model(rmsnorm_post_attn=True))
    assert (
        float(post.blocks[2].attn.post_norm.weight.detach().abs().sum()) == 0.0
    )  # zeroed last module


def test_context_growth_accepts_longer_sequences() -> None:
    model = _model()
    long_idx = torch.randint(0, 256, (1, 32))
    with pytest.raises(ValueError, match="seq_len=16"):
        model(long_idx)
    grown = grow_context(model)
    assert grown(long_idx).logits.shape == (1, 32, 256)
    with pytest.raises(ValueError, match="must exceed"):
        grow_context(model, seq_len=8)


def test_growth_argument_errors() -> None:
    model = _model()
    with pytest.raises(ValueError, match="factor must be an integer >= 2"):
        grow_width(model, 1)
    with pytest.raises(ValueError, match=r"position must be in 0\.\.n_layers=2"):
        grow_depth(model, position=3)


# Measured drift of the quantized function (eval, lam = 1) on seeded tiny models, relative L2
# change of the logits (see the growth module docstring):
#   depth / context, any scheme ............... 0 (new weights are zero; nothing else changes)
#   width, ternary / lsq / adaptive ........... 0 .. 5e-3: float rounding differences (~1e-7)
#                                               flip an occasional activation code
#   width, hadamard, block_size pinned ........ the same
#   width, hadamard, default block ............ 0.06 .. 0.95: the Hadamard block doubles
#   width, ternary, noise_std = 1e-2 .......... 0.01 .. 0.15 (the noise moves the absmean)
WIDTH_TOL = 1e-2
GATED = {"subln": True, "ffn": "gated_sqrelu"}
QUANT_CASES = [
    pytest.param("ternary", {}, GATED, id="ternary-subln"),
    pytest.param("ternary", {}, {}, id="ternary"),
    pytest.param("ternary", {"input_norm": True}, GATED, id="ternary-input-norm"),
    pytest.param("hadamard", {"block_size": 8}, GATED, id="hadamard-pinned-block"),
    pytest.param("lsq", {"weight_bits": 2, "act_bits": 4}, GATED, id="lsq-subln"),
    pytest.param("lsq", {}, {}, id="lsq"),
    pytest.param("adaptive", {}, GATED, id="adaptive"),
]


def _quantized(scheme: str, options: dict, **variant: object) -> ByteLM:
    model = prepare(_model(**variant), scheme, **options)
    model.eval()
    return model


@pytest.mark.parametrize(("scheme", "options", "variant"), QUANT_CASES)
def test_quantized_width_growth_drift_is_measured_and_small(
    scheme: str, options: dict, variant: dict
) -> None:
    model = _quantized(scheme, options, **variant)
    idx = torch.randint(0, 256, (4, 16))
    logits, _ = _outputs(model, idx)
    grown = grow_width(model)
    new_logits, _ = _outputs(grown, idx)
    drift = _rel(new_logits, logits)
    assert drift < WIDTH_TOL, f"{scheme} width growth moved the quantized logits by {drift:.2e}"
    assert quant_recipe(grown) == quant_recipe(model)
    assert sum(isinstance(m, QuantLayer) for m in grown.modules()) == sum(
        isinstance(m, QuantLayer) for m in model.modules()
    )
    assert type(grown.head) is nn.Linear
    _rebuilds(grown)


def test_hadamard_width_growth_with_default_block_moves_the_function() -> None:
    """Documented limitation: the default Hadamard block grows with the width (bound 1.0)."""
    model = _quantized("hadamard", {}, subln=True, ffn="gated_sqrelu")
    idx = torch.randint(0, 256, (4, 16))
    logits, _ = _outputs(model, idx)
    drift = _rel(_outputs(grow_width(model), idx)[0], logits)
    assert 0.01 < drift < 1.0


def test_quantized_width_growth_with_noise_drift_is_bounded() -> None:
    model = _quantized("ternary", {}, subln=True, ffn="gated_sqrelu")
    idx = torch.randint(0, 256, (4, 16))
    logits, _ = _outputs(model, idx)
    gen = torch.Generator().manual_seed(0)
    drift = _rel(_outputs(grow_width(model, noise_std=1e-2, generator=gen), idx)[0], logits)
    assert drift < 0.25


@pytest.mark.parametrize("scheme", ["ternary", "hadamard"])
def test_quantized_depth_and_context_growth_are_exact(scheme: str) -> None:
    model = _quantized(scheme, {}, subln=True, early_exit=True)
    set_quant_lambda(model, 0.3)
    idx = torch.randint(0, 256, (2, 16))
    logits, _ = _outputs(model, idx)
    deep = grow_depth(model, position=1)
    assert torch.equal(_outputs(deep, idx)[0], logits)
    new_layers = [m for m in deep.blocks[1].modules() if isinstance(m, QuantLayer)]
    assert len(new_layers) == 6 and all(m.quant_lambda == 0.3 for m in new_layers)
    assert quant_recipe(deep) == quant_recipe(model)
    _rebuilds(deep)
    assert torch.equal(_outputs(grow_context(model), idx)[0], logits)


def _train_steps(model: ByteLM, opt: torch.optim.Optimizer, steps: int = 2) -> None:
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, 256, (2, 16))
        opt.zero_grad()
        model(idx, idx).task_loss.backward()
        opt.step()


def test_optimizer_moves_to_depth_grown_model() -> None:
    model = _model()
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    rest = [p for n, p in model.named_parameters() if "norm" not in n]
    opt = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.1}, {"params": norms, "weight_decay": 0.0}], lr=1e-3
    )
    _train_steps(model, opt)
    grown = grow_depth(model, position=0)
    new_opt = move_optimizer_to_grown(model, grown, opt)
    assert isinstance(new_opt, torch.optim.AdamW)
    assert [g["lr"] for g in new_opt.param_groups] == pytest.approx([1e-3 / math.sqrt(2)] * 2)
    assert [g["weight_decay"] for g in new_opt.param_groups] == [0.1, 0.0]
    # the old block 0 is now block 1 and keeps its Adam state
    old_q = model.blocks[0].attn.q_proj.weight
    new_q = grown.blocks[1].attn.q_proj.weight
    torch.testing.assert_close(new_opt.state[new_q]["exp_avg"], opt.state[old_q]["exp_avg"])
    assert new_opt.state[new_q]["exp_avg"] is not opt.state[old_q]["exp_avg"]
    # the new block's parameters have fresh state, in the group of their namesakes
    fresh = grown.blocks[0]
    assert fresh.attn.q_proj.weight not in new_opt.state
    group_of = {id(p): i for i, g in enumerate(new_opt.param_groups) for p in g["params"]}
    assert group_of[id(fresh.attn_norm.weight)] == 1 and group_of[id(fresh.ffn.up_proj.weight)] == 0
    assert sum(len(g["params"]) for g in new_opt.param_groups) == len(list(grown.parameters()))
    _train_steps(grown, new_opt)  # and it trains
    assert int(new_opt.state[new_q]["step"]) == 4


def test_optimizer_after_width_growth_gets_fresh_state() -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    _train_steps(model, opt)
    grown = grow_width(model)
    new_opt = move_optimizer_to_grown(model, grown, opt)
    assert len(new_opt.state) == 0
    assert new_opt.param_groups[0]["lr"] == pytest.approx(2e-3 / math.sqrt(2))
    _train_steps(grown, new_opt)
    assert len(new_opt.state) == len(list(grown.parameters()))


def test_learning_rate_rule_and_warmup() -> None:
    assert growth_lr(1e-3) == pytest.approx(1e-3 / math.sqrt(2))
    assert growth_lr(1e-3, 2) == pytest.approx(5e-4)
    assert growth_lr(1e-3, 0) == 1e-3
    with pytest.raises(ValueError):
        growth_lr(1e-3, -1)
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grown = grow_depth(model)
    new_opt = move_optimizer_to_grown(model, grown, opt)
    sched = growth_warmup(new_opt, 4)
    lrs = []
    for _ in range(6):
        lrs.append(new_opt.param_groups[0]["lr"])
        new_opt.step()
        sched.step()
    target = 0.1 / math.sqrt(2)
    assert lrs == pytest.approx([target * f for f in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)])
