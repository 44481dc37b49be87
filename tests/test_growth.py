"""Progressive growth: function preservation, optimizer, and seed 004's rules in the loop.

Warm-up, freeze window, final plateau and growth events reaching MLflow. The growth rules
themselves (trainables/growth_control.py), outside the loop: tests/test_growth_control.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from trainables.config import RunConfig
from trainables.growth_control import GrowthState
from trainables.growth_events import (
    EVENT_METRICS,
    EVENTS_ARTIFACT,
    GROWTH_KINDS,
    events_from_history,
)
from trainables.growth_freeze import FreezeWindow
from trainables.loop import learning_rate, train
from trainables.metric_names import reported_metrics
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
from trainables.parallel import STATE_FILE
from trainables.quant import QuantLayer, prepare, quant_recipe, set_quant_lambda
from trainables.reporting import ListReporter

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


# --- seed 004's rules in the training loop: warm-up, freeze, final plateau, events ------------

TINY_LM = {
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 16},
    "data": {"eval_batches": 1},
    "train": {"batch_size": 4, "lr": 3e-3, "weight_decay": 0.1, "threads": 1},
}
ALWAYS = {"enabled": True, "improve_thresh": 100.0, "window": 1}  # grows at every 2nd evaluation


def _growth_cfg(steps: int, eval_every: int, **growth: object) -> RunConfig:
    data = {k: dict(v) for k, v in TINY_LM.items()}
    data["train"].update({"steps": steps, "eval_every": eval_every})
    data["growth"] = {**ALWAYS, **growth}
    return RunConfig.from_dict(data)


def _state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)


def test_seed_004_defaults_and_the_100_step_warm_up() -> None:
    growth = RunConfig().growth
    assert (growth.lr_warmup_steps, growth.freeze_steps, growth.final_plateau_frac) == (100, 5, 0.2)
    cfg = RunConfig.from_dict({"train": {"lr": 1e-3}, "schedule": {"lr_schedule": "constant"}})
    state = GrowthState(lr_scale=1 / math.sqrt(2), warmup_start=200)
    peak = 1e-3 / math.sqrt(2)
    assert learning_rate(cfg, 200, state) == pytest.approx(peak / 100)
    assert learning_rate(cfg, 249, state) == pytest.approx(peak / 2)
    assert learning_rate(cfg, 299, state) == pytest.approx(peak)
    assert learning_rate(cfg, 400, state) == pytest.approx(peak)


@pytest.mark.parametrize("kind", ["depth", "width"])
def test_freeze_keeps_old_weights_bit_identical_for_five_batches(kind: str, tmp_path: Path) -> None:
    """The real loop, AdamW with weight decay; checkpoints at the growth, 5 and 10 steps on."""
    cfg = _growth_cfg(40, 5, strategy=[kind], max_growths=1)
    reporter = ListReporter(tmp_path)
    train(cfg, reporter=reporter)
    at = {int(p.name.split("_")[1]): _state(p) for p in reporter.checkpoints}
    (event,) = at[40]["growth"]["events"]
    assert event["step"] == 10 and event["freeze_steps"] == 5
    frozen = at[10]["growth"]["frozen"]
    assert at[10]["growth"]["freeze_left"] == 5 and at[15]["growth"]["freeze_left"] == 0
    grown, after, later = at[10]["model"], at[15]["model"], at[20]["model"]
    old_moved = new_moved = 0
    for name, value in grown.items():
        if name not in frozen and not name.endswith("weight") and not name.endswith("bias"):
            continue  # buffers
        box = tuple(slice(0, n) for n in frozen.get(name, [0] * value.dim()))
        if name in frozen:
            assert torch.equal(after[name][box], value[box]), f"{name}: frozen part moved"
            old_moved += not torch.equal(later[name][box], value[box])
        rest = torch.ones_like(value, dtype=torch.bool)
        rest[box] = False
        if rest.any():
            new_moved += not torch.equal(after[name][rest], value[rest])
    assert new_moved > 0 and old_moved > 0
    if kind == "depth":  # the new block (index 1) is wholly new, the old one wholly frozen
        assert not any(n.startswith("blocks.1.") for n in frozen)
        assert all(
            frozen[n] == list(v.shape) for n, v in grown.items() if n.startswith("blocks.0.")
        )
    else:  # every tensor is partly new: its pre-existing part is the leading block
        assert frozen["embed.weight"] == [256, 16] and list(grown["embed.weight"].shape) == [
            256,
            32,
        ]
        assert new_moved >= 0.9 * len(frozen)


@settings(max_examples=25, deadline=None)
@given(
    old=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    grow=st.lists(st.integers(0, 2), min_size=3, max_size=3),
    steps=st.integers(1, 4),
    optimizer=st.sampled_from(["adamw", "sgd"]),
)
def test_freeze_window_property(
    old: list[int], grow: list[int], steps: int, optimizer: str
) -> None:
    """Any leading block, any optimizer with decay: frozen for ``steps`` steps, then free."""
    new = [o + g for o, g in zip(old, grow, strict=False)]
    param = nn.Parameter(torch.randn(*new))
    holder = nn.Module()
    holder.w = param
    opt = (
        torch.optim.AdamW([param], lr=0.1, weight_decay=0.5)
        if optimizer == "adamw"
        else torch.optim.SGD([param], lr=0.1, momentum=0.9, weight_decay=0.5)
    )
    box = tuple(slice(0, n) for n in old)
    start = param.detach().clone()
    window = FreezeWindow(holder, opt, {"w": old}, steps)
    for _ in range(steps):
        opt.zero_grad()
        (param**2).sum().backward()
        opt.step()
    assert torch.equal(param.detach()[box], start[box])
    rest = torch.ones_like(start, dtype=torch.bool)
    rest[box] = False
    assert torch.all(param.detach()[rest] != start[rest])
    assert not window.active
    opt.zero_grad()
    (param**2).sum().backward()
    opt.step()
    assert torch.all(param.detach()[box] != start[box])


def test_resume_inside_a_freeze_window_is_exact(tmp_path: Path) -> None:
    cfg = _growth_cfg(18, 3, strategy=["width"], max_growths=1)  # grows at 6, frozen 6..11
    full = train(cfg)
    first = ListReporter(tmp_path)
    train(cfg, reporter=first, stop_after=9)
    assert _state(first.checkpoints[-1])["growth"]["freeze_left"] == 2
    resumed = train(cfg, resume_from=first.checkpoints[-1])
    assert resumed.step == full.step == 18
    for key, value in full.metrics.items():
        if not key.startswith("perf/"):
            assert resumed.metrics[key] == value, key
    other = resumed.model.state_dict()
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, other[name]), name


@pytest.mark.parametrize(("frac", "last_growth_before"), [(0.5, 10), (0.2, 16), (0.0, 20)])
def test_no_growth_in_the_final_plateau(frac: float, last_growth_before: int) -> None:
    cfg = _growth_cfg(20, 2, strategy=["depth"], max_growths=16, final_plateau_frac=frac)
    reporter = ListReporter()
    train(cfg, reporter=reporter)
    steps = [int(m["step"]) for m in reporter.metrics if "growth/params" in m]
    assert steps and max(steps) < last_growth_before
    assert max(steps) >= last_growth_before - 4  # it kept growing right up to the plateau
    plateau = [m for m in reporter.metrics if m["step"] >= last_growth_before]
    assert len({m["growth/stage"] for m in plateau}) == 1


def test_growth_events_are_reported_with_sizes_and_lr() -> None:
    cfg = _growth_cfg(40, 5, strategy=["depth", "width", "context"], max_growths=3)
    reporter = ListReporter()
    result = train(cfg, reporter=reporter)
    grown = [m for m in reporter.metrics if "growth/params" in m]
    assert [int(m["step"]) for m in grown] == [10, 20, 30]
    assert [GROWTH_KINDS[int(m["growth/kind"])] for m in grown] == ["depth", "width", "context"]
    depth, width, context = grown
    assert (depth["growth/n_layers_before"], depth["growth/n_layers"]) == (1, 2)
    assert (width["growth/d_model_before"], width["growth/d_model"]) == (16, 32)
    assert (context["growth/seq_len_before"], context["growth/seq_len"]) == (16, 32)
    assert depth["growth/params_before"] == reporter.metrics[0]["model/params"]
    assert width["growth/params_before"] == depth["growth/params"] < width["growth/params"]
    assert context["growth/params"] == width["growth/params"]  # RoPE: no new weights
    assert (depth["growth/freeze_steps"], context["growth/freeze_steps"]) == (5, 0)
    for m in grown:
        assert m["growth/lr"] == pytest.approx(m["growth/lr_before"] / math.sqrt(2))
    assert context["growth/lr"] == pytest.approx(3e-3 / 2**1.5)
    assert not any(k in m for m in reporter.metrics if m not in grown for k in EVENT_METRICS)
    assert reported_metrics(cfg) >= EVENT_METRICS
    # the metrics decode back to the events the loop kept
    history = {n: {int(m["step"]): m[n] for m in grown if n in m} for n in EVENT_METRICS}
    decoded = events_from_history(history)
    assert [e["kind"] for e in decoded] == ["depth", "width", "context"]
    assert decoded[1]["old"] == {"params": int(depth["growth/params"]), "n_layers": 2,
                                 "d_model": 16, "seq_len": 16}  # fmt: skip
    assert result.architecture.config["seq_len"] == 32


def test_growth_events_reach_the_mlflow_run(tmp_path: Path) -> None:
    """The driver-side tracker turns a real run's reports into growth_events.json and metrics."""
    from mlflow import MlflowClient

    from orchestrator.tracking import SweepTracker

    cfg = _growth_cfg(30, 5, strategy=["depth", "width"], max_growths=2)
    reporter = ListReporter()
    train(cfg, reporter=reporter)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker("growth-events", tracking_uri=uri, objectives=[("val/loss", "min")])
    tracker.start()
    run_id = tracker.trial_started("t0", {"train.steps": 30})
    for metrics in reporter.metrics:
        tracker.log_result("t0", {**metrics, "training_iteration": 1, "done": False})
    tracker.trial_finished("t0")
    _assert_growth_events(MlflowClient(uri), run_id, [(10, "depth"), (20, "width")])


def _assert_growth_events(client: object, run_id: str, expected: list[tuple[int, str]]) -> None:
    import json

    local = client.download_artifacts(run_id, EVENTS_ARTIFACT)  # type: ignore[attr-defined]
    events = json.loads(Path(local).read_text())
    assert [(e["step"], e["kind"]) for e in events] == expected
    for event in events:
        assert set(event) >= {"step", "kind", "old", "new", "lr", "lr_before"}
        assert (
            set(event["old"]) == set(event["new"]) == {"params", "n_layers", "d_model", "seq_len"}
        )
        assert event["new"]["params"] > event["old"]["params"]
        assert event["lr"] == pytest.approx(event["lr_before"] / math.sqrt(2))
    history = client.get_metric_history(run_id, "growth/params")  # type: ignore[attr-defined]
    assert sorted(m.step for m in history) == [s for s, _ in expected]


@pytest.mark.slow
def test_scaleup_sweep_logs_growth_events(
    mlflow_server: str, ray_session: object, tmp_path: Path
) -> None:
    """The scaleup preset through the real runner: each trial's run holds its growth events."""
    from mlflow import MlflowClient

    from orchestrator.runner import run_sweep
    from orchestrator.spec import load_sweep

    overrides = [
        "model.d_model=16", "model.seq_len=16", "train.batch_size=4", "data.eval_batches=1",
        "train.steps=24", "train.eval_every=4", "search.num_samples=1",
        "search.space.growth.improve_thresh.low=50", "search.space.growth.improve_thresh.high=100",
        "search.space.growth.window=null", "growth.window=1",
        "search.space.growth.strategy=null", "growth.strategy=depth,width",
        f"tracking.uri={mlflow_server}", "tracking.experiment=growth-events",
        f"storage.path={tmp_path}",
    ]  # fmt: skip
    outcome = run_sweep(load_sweep("scaleup", overrides), stream=None)
    assert outcome.failed == 0 and len(outcome.trials) == 1
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("growth-events")
    (child,) = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("bitsweep.role") == "trial"
    ]
    _assert_growth_events(client, child.info.run_id, [(8, "depth"), (16, "width")])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("growth.final_plateau_frac", 1.0),
        ("growth.freeze_steps", -1),
        ("growth.lr_warmup_steps", -5),
    ],
)
def test_seed_004_keys_are_validated(key: str, value: float) -> None:
    from trainables.config import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        RunConfig().with_overrides({key: value})
