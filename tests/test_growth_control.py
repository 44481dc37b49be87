"""When and how a run grows (trainables/growth_control.py, seed 004's rules), outside the loop:
the plateau test over a window, the final plateau, the growth step (strategy cycle, learning-rate
scale, warm-up start, freeze window, event) and the state a checkpoint carries.

The same rules inside the real training loop: tests/test_growth.py.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from trainables.config import RunConfig
from trainables.growth_control import (
    GrowthState,
    attach_freeze,
    grow_model,
    in_final_plateau,
    last_event_metrics,
    should_grow,
    size_of,
)
from trainables.growth_events import EVENT_METRICS
from trainables.models import ByteLM, ByteLMConfig

BASE = {"d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 16}


def _cfg(steps: int = 100, lr: float = 1e-3, seed: int = 0, **growth: object) -> RunConfig:
    return RunConfig.from_dict(
        {
            "model": dict(BASE),
            "train": {"steps": steps, "lr": lr, "seed": seed},
            "growth": {"enabled": True, **growth},
        }
    )


def _model() -> ByteLM:
    torch.manual_seed(0)
    return ByteLM(ByteLMConfig(**BASE))  # type: ignore[arg-type]


def _train_steps(model: ByteLM, opt: torch.optim.Optimizer, steps: int = 2) -> None:
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, 256, (2, 16))
        opt.zero_grad()
        model(idx, idx).task_loss.backward()
        opt.step()


def _eval(state: GrowthState, cfg: RunConfig, step: int, loss: float) -> bool:
    return should_grow(state, {"step": float(step), "val/loss": loss}, cfg)


# --- the plateau test ---------------------------------------------------------------------------


def test_grows_when_the_window_improvement_falls_below_the_threshold() -> None:
    cfg = _cfg(improve_thresh=0.1, window=2)
    state = GrowthState()
    # the first `window` evaluations only fill the history
    assert not _eval(state, cfg, 10, 3.0) and not _eval(state, cfg, 20, 2.5)
    assert not _eval(state, cfg, 30, 2.0)  # 3.0 -> 2.0 over the window: still improving
    assert not _eval(state, cfg, 40, 1.9)  # 2.5 -> 1.9
    assert _eval(state, cfg, 50, 1.95)  # 2.0 -> 1.95: less than 0.1 over two evaluations
    assert state.history == [3.0, 2.5, 2.0, 1.9, 1.95]


@given(
    losses=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=12),
    window=st.integers(1, 4),
    thresh=st.floats(0.0, 2.0),
)
def test_the_decision_is_the_window_improvement_against_the_threshold(
    losses: list[float], window: int, thresh: float
) -> None:
    """Property: after each evaluation, grow iff more than ``window`` losses are recorded and
    ``loss[-window - 1] - loss[-1] < improve_thresh``."""
    cfg = _cfg(steps=10_000, improve_thresh=thresh, window=window)
    state = GrowthState()
    for i, loss in enumerate(losses):
        seen = losses[: i + 1]
        expected = len(seen) > window and seen[-window - 1] - seen[-1] < thresh
        assert _eval(state, cfg, i + 1, loss) == expected


def test_no_growth_and_nothing_recorded_once_growths_are_used_up() -> None:
    cfg = _cfg(improve_thresh=100.0, window=1, max_growths=1)
    state = GrowthState(stage=1)
    assert not _eval(state, cfg, 10, 3.0) and not _eval(state, cfg, 20, 3.0)
    assert state.history == []
    assert not _eval(GrowthState(), _cfg(max_growths=0), 10, 1.0)


@pytest.mark.parametrize(
    ("frac", "first_plateau_step"), [(0.2, 80), (0.5, 50), (0.0, 100), (0.25, 75)]
)
def test_final_plateau_is_the_last_fraction_of_the_steps(
    frac: float, first_plateau_step: int
) -> None:
    cfg = _cfg(steps=100, final_plateau_frac=frac)
    assert not in_final_plateau(first_plateau_step - 1, cfg)
    assert in_final_plateau(first_plateau_step, cfg)


def test_in_the_final_plateau_nothing_is_recorded_and_it_never_grows() -> None:
    cfg = _cfg(steps=100, improve_thresh=100.0, window=1, final_plateau_frac=0.2)
    state = GrowthState()
    assert not _eval(state, cfg, 70, 3.0)
    assert not _eval(state, cfg, 80, 3.0)  # would grow (no improvement), but this is the plateau
    assert state.history == [3.0]
    # the step argument wins over metrics["step"]
    assert should_grow(state, {"step": 80.0, "val/loss": 3.0}, cfg, step=79)


# --- the growth step ----------------------------------------------------------------------------


def test_depth_growth_scales_lr_starts_warm_up_freezes_and_records_the_event() -> None:
    cfg = _cfg(lr=1e-3, strategy=["depth"], freeze_steps=3)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train_steps(model, opt)
    state = GrowthState(history=[2.0, 1.99])
    before = size_of(model)
    grown, new_opt = grow_model(model, opt, state, cfg, step=40)
    assert grown.config.n_layers == 2 and new_opt is not opt
    assert state.stage == 1 and state.history == [] and state.warmup_start == 40
    assert state.lr_scale == pytest.approx(1 / math.sqrt(2))
    assert state.freeze_left == 3 and state.frozen  # the pre-existing weights, by name
    assert all(n.startswith("blocks.0.") or not n.startswith("blocks.") for n in state.frozen)
    (event,) = state.events
    assert event == {
        "step": 40,
        "kind": "depth",
        "old": before,
        "new": size_of(grown),
        "lr_before": pytest.approx(1e-3),
        "lr": pytest.approx(1e-3 / math.sqrt(2)),
        "val_loss": 1.99,
        "freeze_steps": 3,
    }
    assert event["new"]["params"] > event["old"]["params"]
    json.dumps(state.to_dict())  # plain data, as a checkpoint and MLflow need


def test_pre_existing_weights_stay_frozen_for_freeze_steps_then_train() -> None:
    cfg = _cfg(strategy=["depth"], freeze_steps=2)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    _train_steps(model, opt)
    state = GrowthState(history=[1.0])
    grown, new_opt = grow_model(model, opt, state, cfg, step=2)
    old = grown.blocks[0].attn.q_proj.weight
    new = grown.blocks[1].attn.q_proj.weight
    start_old, start_new = old.detach().clone(), new.detach().clone()
    _train_steps(grown, new_opt, steps=2)
    assert torch.equal(old, start_old) and not torch.equal(new, start_new)
    assert state.freeze_left == 0 and state.frozen == {}  # the window closed and said so
    _train_steps(grown, new_opt, steps=1)
    assert not torch.equal(old, start_old)


def test_freeze_keeps_adam_state_of_whole_old_parameters() -> None:
    """Frozen whole parameters are skipped by the optimizer: their moments and step stay put."""
    cfg = _cfg(strategy=["depth"])
    model = ByteLM(ByteLMConfig(**{**BASE, "n_layers": 1}))  # type: ignore[arg-type]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    _train_steps(model, opt)
    state = GrowthState(history=[1.0])
    grown, new_opt = grow_model(model, opt, state, cfg, step=2)
    old = grown.blocks[0].attn.q_proj.weight
    before = {k: v.clone() for k, v in new_opt.state[old].items()}
    _train_steps(grown, new_opt, steps=5)
    assert all(torch.equal(new_opt.state[old][k], v) for k, v in before.items())
    assert state.freeze_left == 0 and state.frozen == {}
    _train_steps(grown, new_opt, steps=1)
    assert int(new_opt.state[old]["step"]) == int(before["step"]) + 1


def test_strategies_cycle_and_context_growth_adds_nothing_to_freeze() -> None:
    cfg = _cfg(strategy=["context", "width"], max_growths=3)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = GrowthState()
    kinds = []
    for step in (10, 20, 30):
        model, opt = grow_model(model, opt, state, cfg, step=step)
        kinds.append(state.events[-1]["kind"])
    assert kinds == ["context", "width", "context"]
    context = state.events[0]
    assert context["new"]["seq_len"] == 2 * context["old"]["seq_len"]
    assert context["new"]["params"] == context["old"]["params"]  # RoPE: no new weights
    assert context["freeze_steps"] == 0
    assert state.events[1]["freeze_steps"] == cfg.growth.freeze_steps
    assert state.lr_scale == pytest.approx(2**-1.5)
    assert model.config.d_model == 2 * BASE["d_model"] and model.config.seq_len == 4 * 16


def test_a_growth_inside_a_freeze_window_restarts_it_over_every_old_part() -> None:
    cfg = _cfg(strategy=["depth"], freeze_steps=4, max_growths=2)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    state = GrowthState()
    model, opt = grow_model(model, opt, state, cfg, step=2)
    _train_steps(model, opt, steps=1)
    assert state.freeze_left == 3
    model, opt = grow_model(model, opt, state, cfg, step=3)
    assert state.freeze_left == 4
    # both blocks that existed before the second growth are frozen now (one of them was new)
    assert {n.split(".")[1] for n in state.frozen if n.startswith("blocks.")} == {"0", "1"}
    frozen_q = model.blocks[1].attn.q_proj.weight.detach().clone()
    _train_steps(model, opt, steps=4)
    assert torch.equal(model.blocks[1].attn.q_proj.weight, frozen_q)
    assert state.freeze_left == 0


def test_width_noise_is_seeded_by_the_run_seed_and_stage() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def grown_with(seed: int) -> nn.Module:
        cfg = _cfg(seed=seed, strategy=["width"])
        out, _ = grow_model(copy.deepcopy(model), copy.deepcopy(opt), GrowthState(), cfg, step=1)
        return out

    a, b, c = grown_with(0), grown_with(0), grown_with(1)
    name = "blocks.0.attn.q_proj.weight"
    assert torch.equal(a.state_dict()[name], b.state_dict()[name])
    assert not torch.equal(a.state_dict()[name], c.state_dict()[name])


# --- events, sizes and the checkpointed state ---------------------------------------------------


def test_event_metrics_only_at_the_growth_step() -> None:
    cfg = _cfg(strategy=["depth"])
    model = _model()
    state = GrowthState()
    assert last_event_metrics(state, 0) == {}
    grown, _ = grow_model(model, torch.optim.SGD(model.parameters(), lr=0.1), state, cfg, step=7)
    metrics = last_event_metrics(state, 7)
    assert set(metrics) <= EVENT_METRICS and metrics["growth/n_layers"] == 2.0
    assert metrics["growth/n_layers_before"] == 1.0
    assert metrics["growth/params"] == size_of(grown)["params"]
    assert last_event_metrics(state, 8) == {}


def test_size_of_reads_the_config_where_there_is_one() -> None:
    model = _model()
    size = size_of(model)
    assert size == {
        "params": sum(p.numel() for p in model.parameters()),
        "n_layers": 1,
        "d_model": 16,
        "seq_len": 16,
    }
    assert size_of(nn.Linear(3, 2)) == {"params": 8, "n_layers": None, "d_model": None,
                                        "seq_len": None}  # fmt: skip


def test_state_round_trips_and_reopens_its_freeze_window_on_resume() -> None:
    cfg = _cfg(strategy=["width"], freeze_steps=3)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    state = GrowthState(history=[1.0])
    grown, new_opt = grow_model(model, opt, state, cfg, step=5)
    _train_steps(grown, new_opt, steps=1)
    saved = state.to_dict()
    assert saved["freeze_left"] == 2
    # resume: the same weights, a fresh optimizer, the state from the checkpoint
    resumed_state = GrowthState.from_dict(json.loads(json.dumps(saved)))
    assert resumed_state == state
    resumed = copy.deepcopy(grown)
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    window = attach_freeze(resumed, resumed_opt, resumed_state)
    assert window is not None and window.active
    box = tuple(slice(0, n) for n in resumed_state.frozen["embed.weight"])
    start = resumed.embed.weight.detach().clone()
    _train_steps(resumed, resumed_opt, steps=2)
    assert torch.equal(resumed.embed.weight[box], start[box])
    assert resumed_state.freeze_left == 0 and not window.active
    assert attach_freeze(resumed, resumed_opt, GrowthState()) is None  # no window to open
