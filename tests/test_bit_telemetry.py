"""Telemetry of the bit LM (seed 004): K, C, S on hand-computed sequences, the regularizers."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from trainables.config import RunConfig
from trainables.loop import train
from trainables.models.bit_telemetry import (
    binary_entropy,
    complexity_surrogate,
    js_divergence,
    lz76_phrase_count,
    lz_complexity,
    negentropy,
    pattern_distribution,
    prediction_telemetry,
    regularizer_terms,
    symbiosis,
)
from trainables.reporting import ListReporter

TINY = {
    "model.arch": "bit_lm", "model.seq_len": 72, "model.d_model": 32, "model.n_heads": 2,
    "model.n_layers": 1, "train.steps": 30, "train.eval_every": 30, "train.batch_size": 8,
    "data.max_bytes": 20000, "data.eval_batches": 1, "train.device": "cpu",
    "telemetry.gen_bytes": 4,
}  # fmt: skip


def _bits(text: str) -> list[int]:
    return [int(c) for c in text]


@pytest.mark.parametrize(
    ("text", "phrases"),
    [
        ("0001101001000101", 6),  # Lempel & Ziv 1976: 0.001.10.100.1000.101
        ("0" * 50, 2),  # 0.000...
        ("01" * 20, 3),  # 0.1.0101...
        ("1", 1),
        ("10", 2),
        ("0110", 3),  # 0.1.10
        ("1001111011000010", 6),  # Kaspar & Schuster 1987: 1.0.01.11.10110.00010
    ],
)
def test_lz76_phrase_counts(text: str, phrases: int) -> None:
    assert lz76_phrase_count(_bits(text)) == phrases


def test_lz_complexity_normalization() -> None:
    n = 64
    assert lz_complexity(torch.zeros(n)) == pytest.approx(2 * math.log2(n) / n)
    assert lz_complexity(torch.tensor([0, 1] * 32)) == pytest.approx(3 * math.log2(n) / n)
    coins = torch.randint(0, 2, (2, 2048), generator=torch.Generator().manual_seed(0))
    assert lz_complexity(coins) > 0.9  # random bits approach 1 (and are clipped at 1)
    assert lz_complexity(torch.tensor([1])) == 0.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=2, max_size=300))
def test_lz_complexity_is_bounded_and_counts_at_least_one_new_phrase(bits: list[int]) -> None:
    c = lz76_phrase_count(bits)
    assert 1 <= c <= len(bits)
    assert 0.0 <= lz_complexity(torch.tensor(bits)) <= 1.0


def test_negentropy_uniform_vs_peaked() -> None:
    assert float(negentropy(torch.full((2, 10), 0.5))) == pytest.approx(0.0, abs=1e-6)
    assert float(negentropy(torch.tensor([[0.0, 1.0, 1.0]]))) == pytest.approx(1.0, abs=1e-4)
    # p = 0.9: H2 = 0.469 bits, K = 0.531
    h = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))
    assert float(negentropy(torch.full((3,), 0.9))) == pytest.approx(1 - h, abs=1e-5)
    assert float(binary_entropy(torch.tensor(0.5))) == pytest.approx(1.0)


def test_pattern_distribution_counts_windows() -> None:
    # 0101 has windows of 2 bits: 01, 10, 01 -> q(01) = 2/3, q(10) = 1/3
    q = pattern_distribution(torch.tensor([[0.0, 1.0, 0.0, 1.0]]), block=2)
    assert q.tolist() == pytest.approx([0.0, 2 / 3, 1 / 3, 0.0], abs=1e-6)
    # soft bits: p = 1/2 everywhere gives the uniform distribution
    assert pattern_distribution(torch.full((1, 9), 0.5), block=3).tolist() == pytest.approx(
        [1 / 8] * 8
    )


def test_js_divergence_bounds() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert float(js_divergence(a, b)) == pytest.approx(1.0)
    assert float(js_divergence(a, a)) == pytest.approx(0.0)
    # JS((1, 0), (1/2, 1/2)) = H(3/4, 1/4) - 1/2 H(1/2) = 0.8113 - 0.5
    assert float(js_divergence(a, torch.tensor([0.5, 0.5]))) == pytest.approx(0.31128, abs=1e-4)


def test_symbiosis_agreement() -> None:
    reference = torch.tensor([[0, 1] * 32])
    assert float(symbiosis(reference.float(), reference)) == pytest.approx(1.0)
    # constant zeros share no 4-bit pattern with 0101...: disjoint supports, S = 0
    assert float(symbiosis(torch.zeros(1, 64), reference)) == pytest.approx(0.0, abs=1e-6)
    coins = torch.randint(0, 2, (1, 4096), generator=torch.Generator().manual_seed(1))
    assert float(symbiosis(torch.full((1, 64), 0.5), coins)) > 0.98  # uniform vs fair coins
    assert 0.0 < float(symbiosis(torch.full((1, 64), 0.5), reference)) < 1.0


def test_complexity_surrogate_orders_repetitive_below_varied() -> None:
    assert float(complexity_surrogate(torch.zeros(1, 40))) == pytest.approx(0.0, abs=1e-6)
    coins = torch.randint(0, 2, (2, 4096), generator=torch.Generator().manual_seed(2)).float()
    assert float(complexity_surrogate(coins)) > 0.95
    # 8-bit windows of 0101... are 2 patterns: 1 bit of entropy over 8
    alternating = torch.tensor([[0.0, 1.0] * 20])
    assert float(complexity_surrogate(alternating)) == pytest.approx(1 / 8, abs=1e-3)


def test_regularizers_only_enabled_terms_and_gradients_move_the_metric() -> None:
    logits = torch.zeros(2, 32, 2, requires_grad=True)
    reference = torch.randint(0, 2, (2, 32), generator=torch.Generator().manual_seed(3))
    assert regularizer_terms(logits, {"K": 0.0, "C": 0.0, "S": 0.0}) == {}
    terms = regularizer_terms(logits, {"K": 1.0})
    assert set(terms) == {"K"}
    # descending 1 - K makes the predictions more confident: K rises
    logits_k = torch.randn(2, 32, 2, generator=torch.Generator().manual_seed(4)) * 0.1
    logits_k.requires_grad_(True)
    before = prediction_telemetry(logits_k.detach(), reference)["K"]
    optimizer = torch.optim.Adam([logits_k], lr=0.2)
    for _ in range(30):
        optimizer.zero_grad()
        regularizer_terms(logits_k, {"K": 1.0})["K"].backward()
        optimizer.step()
    assert prediction_telemetry(logits_k.detach(), reference)["K"] > before + 0.3
    # descending 1 - S pulls the predicted pattern statistics to the reference's
    logits_s = torch.zeros(1, 64, 2)
    logits_s[..., 0] = 4.0  # confident zeros: far from 0101...
    logits_s.requires_grad_(True)
    alternating = torch.tensor([[0, 1] * 32])
    q_alt = pattern_distribution(alternating.float(), 4)
    before_s = prediction_telemetry(logits_s.detach(), alternating)["S"]
    optimizer = torch.optim.Adam([logits_s], lr=0.2)
    for _ in range(100):
        optimizer.zero_grad()
        regularizer_terms(logits_s, {"S": 1.0}, q_ref=q_alt)["S"].backward()
        optimizer.step()
    assert prediction_telemetry(logits_s.detach(), alternating)["S"] > before_s + 0.5
    # descending 1 - C~ breaks up a repetitive prediction
    logits_c = torch.zeros(1, 64, 2)
    logits_c[..., 0] = 4.0
    logits_c.requires_grad_(True)
    before_c = float(complexity_surrogate(torch.softmax(logits_c.detach(), -1)[..., 1]))
    optimizer = torch.optim.Adam([logits_c], lr=0.2)
    for _ in range(50):
        optimizer.zero_grad()
        regularizer_terms(logits_c, {"C": 1.0})["C"].backward()
        optimizer.step()
    after_c = float(complexity_surrogate(torch.softmax(logits_c.detach(), -1)[..., 1]))
    assert after_c > before_c + 0.3


def test_symbiosis_regularizer_needs_a_reference() -> None:
    with pytest.raises(ValueError, match="lambda_S"):
        regularizer_terms(torch.zeros(1, 8, 2), {"S": 1.0})


def _run(overrides: dict[str, object]) -> list[dict[str, float]]:
    cfg = RunConfig().with_overrides({**TINY, **overrides})
    reporter = ListReporter()
    train(cfg, reporter=reporter)
    return reporter.metrics


def test_telemetry_is_reported_on_validation() -> None:
    last = _run({})[-1]
    for name in ("telemetry/K", "telemetry/C", "telemetry/S"):
        assert 0.0 <= last[name] <= 1.0
    assert "loss/K" not in last  # a zero weight computes nothing


def test_negentropy_weight_raises_k_in_training() -> None:
    """loss.lambda_K moves the model: its validation predictions become more confident."""
    plain = _run({})[-1]
    pushed = _run({"loss.lambda_K": 2.0})[-1]
    assert "loss/K" in pushed and 0.0 <= pushed["loss/K"] <= 1.0
    assert pushed["telemetry/K"] > plain["telemetry/K"] + 0.1
