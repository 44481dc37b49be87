"""Learnable early exit (seed 001): gate, routed task loss, routing, exit loss, layer dropout,
per-token and per-sequence inference, and the behaviour: gates learn which tokens are easy."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from trainables.data.bytes import pydocs_bytes
from trainables.models import (
    ByteLM,
    ByteLMConfig,
    ExitGate,
    FloatLinear,
    bernoulli_ste,
    exit_curriculum_mask,
    exit_distribution,
    exit_loss_weights,
    expected_exit,
    layer_dropout_rates,
    realized_exit,
    routed_task_loss,
    routing_loss,
)
from trainables.models.exit_inference import active_positions, sequence_decision

probs = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=10)
EE_STEPS, EE_WARMUP, EE_LAMBDA_R = 500, 300, 0.02  # the behaviour test's training


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
    gate = ExitGate(16, 4, threshold=0.5, dropout=0.0)
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


def test_gate_is_the_seeds_mlp_with_a_dropout_key() -> None:
    """Seed 001: LayerNorm, Linear(d, d/4), ReLU, Dropout(gate_dropout), Linear(d/4, 1), sigmoid."""
    model = _ee_model(d_model=64, gate_dropout=0.3)
    gate = model.exit_gates[0]
    assert isinstance(gate.norm, nn.LayerNorm) and gate.norm.normalized_shape == (64,)
    assert isinstance(gate.fc1, FloatLinear) and (gate.fc1.in_features, gate.fc1.out_features) == (
        64,
        16,
    )
    assert isinstance(gate.fc2, FloatLinear) and gate.fc2.out_features == 1
    assert isinstance(gate.drop, nn.Dropout) and gate.drop.p == 0.3
    assert _ee_model().exit_gates[0].drop.p == 0.1  # the seed's default
    assert model.new_gate().drop.p == 0.3  # gates added by growth use the key too
    h = torch.randn(4, 16, 64)
    with torch.no_grad():
        manual = torch.sigmoid(gate.fc2(torch.relu(gate.fc1(gate.norm(h))))).squeeze(-1)
        gate.train()
        noisy = [gate.probability(h) for _ in range(2)]
        gate.eval()
        torch.testing.assert_close(gate.probability(h), manual)
    assert not torch.equal(noisy[0], noisy[1])  # dropout is active in training
    with pytest.raises(ValueError, match=r"ByteLMConfig\.gate_dropout must be in"):
        _ee_model(gate_dropout=1.0)


def test_realized_exit_is_the_first_firing_gate() -> None:
    z = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    expected = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(realized_exit(z), expected)


@given(st.lists(st.booleans(), min_size=2, max_size=8), st.integers(0, 2**31 - 1))
def test_sampled_task_loss_gradient_is_the_finite_difference_of_exiting(
    fired: list[bool], seed: int
) -> None:
    """d loss / d p_l = c_l - c_next for reached gates, 0 past the exit (straight-through)."""
    n = len(fired)
    c = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 5
    p = torch.full((n,), 0.5, dtype=torch.float64, requires_grad=True)
    hard = torch.tensor([float(f) for f in fired[:-1]] + [1.0], dtype=torch.float64)
    z = p + (hard - p).detach()
    loss, weights = routed_task_loss(c, p, z, "sampled")
    exit_at = int(hard.argmax())  # the first firing gate (the last layer always fires)
    assert float(loss.detach()) == pytest.approx(float(c[exit_at]))
    assert weights.detach().tolist() == [1.0 if i == exit_at else 0.0 for i in range(n)]
    loss.backward()
    for layer in range(n - 1):
        later = [k for k in range(layer + 1, n) if hard[k] == 1.0]
        want = float(c[layer] - c[later[0]]) if layer <= exit_at else 0.0
        assert float(p.grad[layer]) == pytest.approx(want)


def test_expected_task_loss_is_the_mean_over_the_exit_distribution() -> None:
    c = torch.tensor([3.0, 2.0, 1.0])
    p = torch.tensor([0.5, 0.5, 0.2], requires_grad=True)
    loss, weights = routed_task_loss(c, p, p, "expected")
    torch.testing.assert_close(weights.detach(), torch.tensor([0.5, 0.25, 0.25]))
    assert float(loss.detach()) == pytest.approx(1.5 + 0.5 + 0.25)
    loss.backward()
    assert float(p.grad[0]) == pytest.approx(3.0 - 1.5)  # c_1 - E[c | past layer 1]
    with pytest.raises(ValueError, match="exit_task_loss"):
        routed_task_loss(c, p, p, "final")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["sampled", "expected"])
def test_task_loss_gradient_reaches_every_gate(mode: str) -> None:
    torch.manual_seed(0)
    model = _ee_model(exit_task_loss=mode, gate_dropout=0.0)
    idx = torch.randint(0, 256, (4, 16))
    out = model(idx, idx.roll(-1, 1))
    assert "route/final_loss" in out.metrics
    out.task_loss.backward()
    for gate in model.exit_gates:
        assert gate.fc2.weight.grad is not None and float(gate.fc2.weight.grad.abs().sum()) > 0
        assert float(gate.fc1.weight.grad.abs().sum()) > 0
    # the scored logits are those of each token's exit; the loss is their cross-entropy
    ce = nn.functional.cross_entropy(out.logits.reshape(-1, 256), idx.roll(-1, 1).reshape(-1))
    if mode == "sampled":
        assert float(out.task_loss.detach()) == pytest.approx(float(ce.detach()), rel=1e-5)


def test_final_task_loss_keeps_the_gates_out_of_the_task_loss() -> None:
    """``exit_task_loss: final`` is the old behaviour: the task loss never reaches a gate."""
    model = _ee_model(exit_task_loss="final")
    idx = torch.randint(0, 256, (2, 16))
    out = model(idx, idx)
    out.task_loss.backward()
    assert all(g.fc2.weight.grad is None for g in model.exit_gates)
    assert "route/final_loss" not in out.metrics


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


def test_routed_exit_loss_covers_every_layer_as_layerskip() -> None:
    """With the routed task loss the LayerSkip exit loss weighs layers 1..L, the last included."""
    model = _ee_model(exit_loss=True, exit_loss_weighting="linear")
    idx = torch.randint(0, 256, (2, 16))
    out = model(idx, idx)
    h = model.drop(model.embed(idx))
    cos, sin = model.rope(16)
    expected = 0.0
    for layer, block in enumerate(model.blocks, start=1):
        h = block(h, cos, sin)
        ce = nn.functional.cross_entropy(model.exit_logits(h).reshape(-1, 256), idx.reshape(-1))
        expected += layer / 10 * float(ce.detach())  # linear weights 1..4, normalized
    assert float(out.aux_losses["exit"].detach()) == pytest.approx(expected, rel=1e-5)


def _force_gate(gate: ExitGate, logit: float) -> None:
    with torch.no_grad():
        gate.fc2.weight.zero_()
        gate.fc2.bias.fill_(logit)


def _ffn_rows(model: ByteLM) -> list[list[int]]:
    """Per block, the number of token rows its FFN computed at each call."""
    rows: list[list[int]] = [[] for _ in model.blocks]
    for i, block in enumerate(model.blocks):
        block.ffn.register_forward_hook(
            lambda m, a, o, i=i: rows[i].append(a[0].numel() // a[0].shape[-1])
        )
    return rows


def test_early_exit_inference_skips_remaining_blocks() -> None:
    model = _ee_model().eval()
    _force_gate(model.exit_gates[0], -10.0)
    _force_gate(model.exit_gates[1], 10.0)  # every token exits after layer 2
    calls = _count_calls(model)
    idx = torch.randint(0, 256, (3, 16))
    out = model(idx, idx)
    assert [len(c) for c in calls] == [1, 1, 0, 0]
    assert out.metrics["route/exit_layer"] == 2.0
    assert out.metrics["route/compute_frac"] == 0.5
    assert model.last_exit_layers.shape == (3, 16) and bool((model.last_exit_layers == 2).all())
    assert model.last_block_tokens == [48, 48, 0, 0]
    assert out.aux_losses == {}
    model.exit_at_inference = False
    full = model(idx)
    assert [len(c) for c in calls] == [2, 2, 1, 1]
    assert "route/expected_exit" in full.metrics


def _reference_token_exit(model: ByteLM, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token exit computed densely: every block on every token, exited states kept frozen."""
    cos, sin = model.rope(idx.shape[1])
    h = model.embed(idx)
    n = model.config.n_layers
    active = torch.ones(idx.shape, dtype=torch.bool)
    exits = torch.full(idx.shape, n)
    for layer, block in enumerate(model.blocks, start=1):
        h = torch.where(active[..., None], block(h, cos, sin), h)
        if layer == n:
            break
        fire = (model.exit_gates[layer - 1].probability(h) > model.config.exit_threshold) & active
        exits[fire] = layer
        active &= ~fire
    return model.exit_logits(h), exits


@pytest.mark.parametrize(
    "variant", [{}, {"ffn": "swiglu", "subln": True, "rmsnorm_post_attn": True}]
)
def test_per_token_exit_is_exact_and_skips_exited_tokens_compute(variant: dict) -> None:
    """Exited tokens keep serving as keys/values; their query and FFN work is not done."""
    torch.manual_seed(3)
    model = _ee_model(**variant).eval()
    idx = torch.randint(0, 256, (5, 16))
    with torch.no_grad():
        h1 = model.blocks[0](model.embed(idx), *model.rope(16))
        median = float(model.exit_gates[0].probability(h1).median())
    model.config = model.config.replace(exit_threshold=median)  # about half exit at layer 1
    rows = _ffn_rows(model)
    with torch.no_grad():
        out = model(idx, idx)
        ran = [sum(r) for r in rows]  # before the dense reference runs the blocks again
        ref_logits, ref_exits = _reference_token_exit(model, idx)
    exits = model.last_exit_layers
    assert torch.equal(exits, ref_exits)
    assert 0 < int((exits == 1).sum()) < exits.numel()  # a mix: some tokens exit at layer 1
    torch.testing.assert_close(out.logits, ref_logits, atol=1e-5, rtol=1e-5)
    # the FFN of block l ran on exactly the tokens that had not exited before it
    reached = [int((exits >= layer).sum()) for layer in range(1, 5)]
    assert ran == reached
    assert model.last_block_tokens == reached
    assert out.metrics["route/compute_frac"] == pytest.approx(sum(reached) / (4 * exits.numel()))
    assert out.metrics["route/compute_frac"] == pytest.approx(float(exits.float().mean()) / 4)
    assert out.metrics["route/compute_frac"] < 1.0


def test_active_positions_pack_each_rows_active_tokens_in_order() -> None:
    active = torch.tensor([[True, False, True, True], [False, False, False, True]])
    pos, valid = active_positions(active)
    assert valid.tolist() == [[True, True, True], [True, False, False]]
    assert pos[0].tolist() == [0, 2, 3] and pos[1, 0] == 3


def test_early_exit_inference_per_sequence_is_exact() -> None:
    model = _ee_model(exit_mode="sequence").eval()
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
    layers = model.last_exit_layers[:, 0]  # [B]: every token of a sequence exits together
    assert bool((model.last_exit_layers == layers[:, None]).all())
    assert (layers == 1).sum() >= 3 and (layers > 1).any()
    assert calls[1] == [int((layers > 1).sum())]  # block 2 ran only on the remaining rows
    with torch.no_grad():
        for b, layer in enumerate(layers.tolist()):
            expected = model.exit_logits(hs[layer - 1][b : b + 1])
            torch.testing.assert_close(out.logits[b : b + 1], expected, atol=1e-5, rtol=1e-5)
    assert out.metrics["route/exit_layer"] == pytest.approx(float(layers.float().mean()))
    assert out.metrics["route/compute_frac"] == pytest.approx(float(layers.float().mean()) / 4)


@pytest.mark.parametrize("aggregate", ["all", "last"])
def test_exit_aggregates(aggregate: str) -> None:
    model = _ee_model(exit_mode="sequence", exit_aggregate=aggregate).eval()
    p = torch.tensor([[0.9, 0.9, 0.2], [0.9, 0.9, 0.9], [0.2, 0.2, 0.9]])
    expected = {"all": [False, True, False], "last": [False, True, True]}[aggregate]
    assert sequence_decision(model, p).tolist() == expected


def _mixed_windows(
    text: torch.Tensor, n: int, t: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` windows: the first half one repeated letter each, the second half pydocs text."""
    starts = torch.randint(0, len(text) - t - 1, (n // 2,), generator=gen)
    natural = text[starts[:, None] + torch.arange(t + 1)]  # [n/2, t+1]
    letters = torch.randint(97, 123, (n // 2, 1), generator=gen).expand(n // 2, t + 1)
    windows = torch.cat((letters, natural))  # [n, t+1]
    return windows[:, :-1], windows[:, 1:]


def test_gates_learn_to_exit_easy_tokens_early() -> None:
    """Behaviour (seed 001 with the LayerSkip / CALM signal): the gates learn which tokens are easy.

    Half the windows repeat one byte (every exit predicts it), half are pydocs text (the deeper
    exits predict it better). The task loss scores each token at its sampled exit, so after a
    short training with the routing target at the first layer the repeated-byte tokens exit
    clearly earlier than the text tokens. Gates moved by the routing loss alone (the old code,
    ``exit_task_loss: final``) pull every token to the target alike and fail this.
    """
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = torch.frombuffer(bytearray(pydocs_bytes()), dtype=torch.uint8).long()
        split = int(0.9 * len(data))
        train_text, val_text = data[:split], data[split:]
        model = ByteLM(
            ByteLMConfig(d_model=64, n_layers=3, n_heads=4, seq_len=32, early_exit=True,
                         target_exit_layer=1.0, exit_loss=True, exit_task_loss="sampled")
        )  # fmt: skip
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(1)
        for step in range(EE_STEPS):
            x, y = _mixed_windows(train_text, 16, 32, gen)
            out = model(x, y)
            # the compute cost comes in once the exits predict something (loss.route_warmup_frac)
            lambda_r = EE_LAMBDA_R if step >= EE_WARMUP else 0.0
            loss = out.task_loss + lambda_r * out.aux_losses["route"] + out.aux_losses["exit"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        vx, vy = _mixed_windows(val_text, 64, 32, torch.Generator().manual_seed(2))
        with torch.no_grad():
            model(vx, vy)
        exits = model.last_exit_layers[:, 4:].float()  # past the first bytes of each window
    finally:
        torch.set_num_threads(threads)
    repeated, natural = float(exits[:32].mean()), float(exits[32:].mean())
    assert repeated < natural - 0.25, f"mean exit: repeated {repeated:.2f}, text {natural:.2f}"
