"""Learnable early exit: gate, exit distribution, routing, exit loss, layer dropout, inference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from trainables.models import (
    ByteLM,
    ByteLMConfig,
    ExitGate,
    bernoulli_ste,
    exit_curriculum_mask,
    exit_distribution,
    exit_loss_weights,
    expected_exit,
    layer_dropout_rates,
    routing_loss,
)

probs = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=10)


@given(probs)
def test_exit_distribution_sums_to_one_for_any_gate_probabilities(p: list[float]) -> None:
    dist = exit_distribution(torch.tensor(p, dtype=torch.float64))
    assert dist.shape == (len(p),)
    assert float(dist.min()) >= 0.0
    assert float(dist.sum()) == pytest.approx(1.0, abs=1e-12)
    e = float(expected_exit(torch.tensor(p, dtype=torch.float64)))
    assert 1.0 - 1e-12 <= e <= len(p) + 1e-12


def test_exit_distribution_values() -> None:
    p = torch.tensor([0.5, 0.5, 0.9, 0.3])  # the last entry is ignored: what remains exits there
    torch.testing.assert_close(exit_distribution(p), torch.tensor([0.5, 0.25, 0.225, 0.025]))
    assert float(expected_exit(p)) == pytest.approx(0.5 + 0.5 + 0.675 + 0.1)
    assert float(expected_exit(torch.ones(5))) == pytest.approx(1.0)
    assert float(expected_exit(torch.zeros(5))) == pytest.approx(5.0)
    batch = torch.rand(3, 7, 4)  # [B, T, L]
    assert expected_exit(batch).shape == (3, 7)


def test_routing_loss_is_the_mean_squared_distance_to_the_target() -> None:
    p = torch.tensor([[0.5, 0.5, 0.9, 0.3], [1.0, 0.0, 0.0, 0.0]])
    e = torch.tensor([1.775, 1.0])
    expected = float(((e - 3.0) ** 2).mean())
    assert float(routing_loss(p, 3.0).detach()) == pytest.approx(expected, rel=1e-6)


def test_bernoulli_ste_is_hard_with_identity_gradient() -> None:
    p = torch.full((1000,), 0.3, requires_grad=True)
    z = bernoulli_ste(p)
    assert set(z.detach().unique().tolist()) <= {0.0, 1.0}
    assert 0.2 < float(z.detach().mean()) < 0.4
    z.sum().backward()
    torch.testing.assert_close(p.grad, torch.ones(1000))


def test_gate_samples_in_training_and_thresholds_in_eval() -> None:
    gate = ExitGate(16, 4, threshold=0.5)
    h = torch.randn(2, 5, 16)
    p, z = gate(h)
    assert p.shape == z.shape == (2, 5)
    assert bool(((p > 0) & (p < 1)).all())
    gate.eval()
    p, z = gate(h)
    torch.testing.assert_close(z, (p > 0.5).float())


def _ee_model(**overrides: object) -> ByteLM:
    base = {"d_model": 32, "n_layers": 4, "n_heads": 2, "seq_len": 16, "early_exit": True}
    return ByteLM(ByteLMConfig(**{**base, **overrides}))  # type: ignore[arg-type]


def test_routing_loss_gradient_reaches_the_gates_only() -> None:
    model = _ee_model(target_exit_layer=3.5)
    idx = torch.randint(0, 256, (2, 16))
    out = model(idx, idx)
    assert set(out.aux_losses) == {"route"}
    assert 1.0 <= out.metrics["route/expected_exit"] <= 4.0
    assert 1.0 <= out.metrics["route/sampled_exit"] <= 4.0
    out.aux_losses["route"].backward()
    for gate in model.exit_gates:
        assert gate.fc2.weight.grad is not None and gate.fc2.weight.grad.abs().sum() > 0
        assert gate.fc1.weight.grad.abs().sum() > 0
    # the gates read a detached hidden state: routing does not reshape the language model
    assert model.blocks[0].attn.q_proj.weight.grad is None


def test_routing_loss_moves_expected_exit_toward_target() -> None:
    """Functional: under the routing loss the expected exit layer moves to target_exit_layer."""
    target = 3.5
    model = _ee_model(target_exit_layer=target)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    history = []
    for _ in range(40):
        idx = torch.randint(0, 256, (8, 16), generator=gen)
        out = model(idx, idx.roll(-1, 1))
        history.append(out.metrics["route/expected_exit"])
        loss = out.task_loss + out.aux_losses["route"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    start, end = abs(history[0] - target), abs(history[-1] - target)
    assert start > 1.0
    assert end < 0.25 * start, f"expected exit {history[0]:.2f} -> {history[-1]:.2f}"


def test_exit_loss_weights_grow_with_depth_and_sum_to_one() -> None:
    w = exit_loss_weights(5, "layerskip")
    assert w == pytest.approx([1 / 20, 3 / 20, 6 / 20, 10 / 20])
    assert exit_loss_weights(4, "linear") == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert exit_loss_weights(3, "uniform") == pytest.approx([0.5, 0.5])
    assert exit_loss_weights(4, "linear", [True, False, True]) == pytest.approx([0.25, 0.0, 0.75])
    assert exit_loss_weights(3, "uniform", [False, False]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="exit_loss_weighting"):
        exit_loss_weights(3, "cubic")  # type: ignore[arg-type]


@given(
    st.integers(2, 12),
    st.integers(0, 1000),
    st.sampled_from(["none", "rotational", "gradual"]),
    st.sampled_from(["layerskip", "linear", "uniform"]),
)
def test_curriculum_weights_sum_to_one_when_an_exit_is_active(
    n: int, step: int, curriculum: str, weighting: str
) -> None:
    mask = exit_curriculum_mask(n, step, curriculum, rotation=3, gradual_steps=10)  # type: ignore[arg-type]
    weights = exit_loss_weights(n, weighting, mask)  # type: ignore[arg-type]
    assert len(mask) == len(weights) == n - 1
    if any(mask):
        assert sum(weights) == pytest.approx(1.0)
    assert all(w == 0 for w, a in zip(weights, mask, strict=True) if not a)


def test_curricula() -> None:
    assert exit_curriculum_mask(5, 7, "none") == [True] * 4
    assert exit_curriculum_mask(5, 0, "rotational", rotation=2) == [False, True, False, True]
    assert exit_curriculum_mask(5, 1, "rotational", rotation=2) == [True, False, True, False]
    assert exit_curriculum_mask(5, 0, "gradual", gradual_steps=10) == [False] * 4
    assert exit_curriculum_mask(5, 10, "gradual", gradual_steps=10) == [False, False, False, True]
    assert exit_curriculum_mask(5, 25, "gradual", gradual_steps=10) == [False, False, True, True]
    assert exit_curriculum_mask(5, 99, "gradual", gradual_steps=10) == [True] * 4


def test_exit_loss_in_the_model_follows_the_curriculum() -> None:
    model = _ee_model(
        early_exit=False, exit_loss=True, exit_curriculum="gradual", exit_gradual_steps=5
    )
    idx = torch.randint(0, 256, (2, 16))
    assert float(model(idx, idx, step=0).aux_losses["exit"].detach()) == 0.0  # no exit enabled yet
    out = model(idx, idx, step=5)  # only exit 3 (of 1..3)
    h = model.drop(model.embed(idx))
    cos, sin = model.rope(16)
    for block in model.blocks[:3]:
        h = block(h, cos, sin)
    ce3 = nn.functional.cross_entropy(model.exit_logits(h).reshape(-1, 256), idx.reshape(-1))
    assert float(out.aux_losses["exit"].detach()) == pytest.approx(float(ce3.detach()), rel=1e-5)
    assert "route" not in out.aux_losses
    assert "exit" not in model(idx).aux_losses  # needs targets
    assert model.step == 5
    model.set_step(100)
    assert float(model(idx, idx).aux_losses["exit"].detach()) > 0


def test_layer_dropout_rates_by_depth() -> None:
    assert layer_dropout_rates(4, 0.2, "quadratic") == pytest.approx(
        [0.2 / 16, 0.2 * 4 / 16, 0.2 * 9 / 16, 0.2]
    )
    exp = layer_dropout_rates(5, 0.2, "exponential")
    assert exp[0] == 0.0 and exp[-1] == pytest.approx(0.2)
    assert exp[2] == pytest.approx(0.2 * (math.sqrt(2) - 1))
    assert all(a < b for a, b in itertools.pairwise(exp))
    assert layer_dropout_rates(3, 0.1, "uniform") == [0.1] * 3
    assert layer_dropout_rates(1, 0.3, "exponential") == [0.3]
    with pytest.raises(ValueError, match="layer_dropout"):
        layer_dropout_rates(3, 1.0)


def _count_calls(model: ByteLM) -> list[list[int]]:
    """Per block, the batch sizes it was called with."""
    calls: list[list[int]] = [[] for _ in model.blocks]
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: calls[i].append(a[0].shape[0]))
    return calls


def test_layer_dropout_skips_deep_blocks_in_training_only() -> None:
    model = _ee_model(early_exit=False, layer_dropout=0.9, layer_dropout_schedule="quadratic")
    calls = _count_calls(model)
    idx = torch.randint(0, 256, (2, 16))
    dropped = [model(idx, idx).metrics["model/layers_dropped"] for _ in range(50)]
    runs = [len(c) for c in calls]
    # rates 0.056, 0.225, 0.506, 0.9: the deepest block runs least
    assert runs[0] > runs[3] and runs[3] <= 15
    assert sum(dropped) == 4 * 50 - sum(runs)
    model.eval()
    before = [len(c) for c in calls]
    model(idx)
    assert [len(c) for c in calls] == [b + 1 for b in before]


def test_layer_dropout_decisions_agree_across_ranks() -> None:
    """Two replicas (ranks) with different global RNG states skip the same blocks each step."""
    replicas = [_ee_model(early_exit=False, layer_dropout=0.6) for _ in range(2)]
    patterns = []
    for seed, model in enumerate(replicas):
        torch.manual_seed(seed)
        calls = _count_calls(model)
        idx = torch.randint(0, 256, (2, 16))
        for _ in range(10):
            model(idx, idx)
        patterns.append([len(c) for c in calls])
    assert patterns[0] == patterns[1]
    assert patterns[0] != [10, 10, 10, 10]


def _force_gate(gate: ExitGate, logit: float) -> None:
    with torch.no_grad():
        gate.fc2.weight.zero_()
        gate.fc2.bias.fill_(logit)


def test_early_exit_inference_skips_remaining_blocks() -> None:
    model = _ee_model().eval()
    _force_gate(model.exit_gates[0], -10.0)
    _force_gate(model.exit_gates[1], 10.0)  # everyone exits after layer 2
    calls = _count_calls(model)
    idx = torch.randint(0, 256, (3, 16))
    out = model(idx, idx)
    assert [len(c) for c in calls] == [1, 1, 0, 0]
    assert out.metrics["route/exit_layer"] == 2.0
    assert out.metrics["route/compute_frac"] == 0.5
    assert model.last_exit_layers.tolist() == [2, 2, 2]
    assert out.aux_losses == {}
    model.exit_at_inference = False
    full = model(idx)
    assert [len(c) for c in calls] == [2, 2, 1, 1]
    assert "route/expected_exit" in full.metrics


def test_early_exit_inference_is_per_sequence_and_exact() -> None:
    model = _ee_model().eval()
    idx = torch.randint(0, 256, (8, 16))
    cos, sin = model.rope(16)
    with torch.no_grad():
        hs, h = [], model.embed(idx)
        for block in model.blocks:
            h = block(h, cos, sin)
            hs.append(h)
        p1 = model.exit_gates[0].probability(hs[0]).mean(-1)  # [B]
    # a threshold between the sequences' mean gate probabilities: some exit at layer 1
    model.config = model.config.replace(exit_threshold=float(p1.median()))
    calls = _count_calls(model)
    with torch.no_grad():
        out = model(idx)
    layers = model.last_exit_layers
    assert (layers == 1).sum() >= 3 and (layers > 1).any()
    assert calls[1] == [int((layers > 1).sum())]  # block 2 ran only on the remaining rows
    with torch.no_grad():
        for b, layer in enumerate(layers.tolist()):
            expected = model.exit_logits(hs[layer - 1][b : b + 1])
            torch.testing.assert_close(out.logits[b : b + 1], expected, atol=1e-5, rtol=1e-5)
    assert out.metrics["route/exit_layer"] == pytest.approx(float(layers.float().mean()))


@pytest.mark.parametrize("aggregate", ["all", "last"])
def test_exit_aggregates(aggregate: str) -> None:
    model = _ee_model(exit_aggregate=aggregate).eval()
    p = torch.tensor([[0.9, 0.9, 0.2], [0.9, 0.9, 0.9], [0.2, 0.2, 0.9]])
    expected = {"all": [False, True, False], "last": [False, True, True]}[aggregate]
    assert model._exit_decision(p).tolist() == expected
