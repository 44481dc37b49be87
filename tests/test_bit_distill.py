"""Distillation (collapse) of the bit LM (seed 004): clustering, students, the wider retry."""

from __future__ import annotations

import json
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from trainables.config import ConfigError, RunConfig
from trainables.data.bits import bytes_to_bits
from trainables.data.bytes import pydocs_bytes
from trainables.loop import train
from trainables.models.bit_distill import (
    activation_summaries,
    collapse,
    kmeans,
    representatives,
    scaled_width,
)
from trainables.models.bit_lm import BitLM
from trainables.models.bit_lm_config import BitLMConfig
from trainables.reporting import ListReporter

TINY = {
    "model.arch": "bit_lm", "model.seq_len": 72, "model.d_model": 32, "model.n_heads": 2,
    "model.n_layers": 1, "train.steps": 20, "train.eval_every": 20, "train.batch_size": 8,
    "data.max_bytes": 20000, "data.eval_batches": 1, "train.device": "cpu",
    "telemetry.gen_bytes": 4, "distill.enabled": True, "distill.k": 4, "distill.candidates": 16,
    "distill.steps": 5,
}  # fmt: skip


def _blobs(k: int, per: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, 6, generator=g) * 20
    labels = torch.arange(k).repeat_interleave(per)
    return centres[labels] + torch.randn(k * per, 6, generator=g), labels


def test_kmeans_recovers_separated_clusters() -> None:
    x, labels = _blobs(8, 10)
    _, found = kmeans(x, 8, generator=torch.Generator().manual_seed(1))
    # every true cluster maps to exactly one found cluster
    for j in range(8):
        assert found[labels == j].unique().numel() == 1
    assert found.unique().numel() == 8


def test_representatives_pick_one_distinct_sequence_per_cluster() -> None:
    x, labels = _blobs(8, 10, seed=2)
    chosen = representatives(x, 8, generator=torch.Generator().manual_seed(3))
    assert chosen.numel() == 8 and chosen.unique().numel() == 8
    assert sorted(labels[chosen].tolist()) == list(range(8))  # one per true cluster


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(0, 1000))
def test_representatives_are_always_distinct(k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 3, (12, 2), generator=g).float()  # many duplicate points
    chosen = representatives(x, k, generator=g)
    assert chosen.unique().numel() == k


def test_representatives_of_a_bit_lm_are_k_distinct_sequences() -> None:
    torch.manual_seed(0)
    model = BitLM(BitLMConfig(d_model=16, n_layers=1, n_heads=2, seq_len=72))
    text = torch.tensor(list(pydocs_bytes()[:4000]))
    sequences = bytes_to_bits(text[: 40 * 8].view(40, 8))  # [40, 72]
    summaries = activation_summaries(model, sequences)
    assert summaries.shape == (40, 16)
    chosen = representatives(summaries, 8, generator=torch.Generator().manual_seed(0))
    assert chosen.unique().numel() == 8
    assert len({tuple(sequences[i].tolist()) for i in chosen.tolist()}) == 8


def test_scaled_width_is_a_valid_bit_lm_width() -> None:
    assert scaled_width(64, 0.5, 4) == 32
    assert scaled_width(32, 0.75, 4) == 24
    assert scaled_width(20, 0.5, 4) == 12  # 10 rounded up to a multiple of lcm(2, 4)
    assert scaled_width(8, 0.1, 2) == 2


def _collapse(floors: dict[str, float]) -> list[dict[str, object]]:
    torch.manual_seed(0)
    teacher = BitLM(BitLMConfig(d_model=32, n_layers=1, n_heads=2, seq_len=72))
    bits = bytes_to_bits(torch.tensor(list(pydocs_bytes()[:80])).view(8, 10))  # [8, 90]

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return bits[:, :72], bits[:, 1:73]

    def measure(student: torch.nn.Module) -> dict[str, float]:
        return {"C": 0.6, "S": 0.7, "width": float(student.config.d_model)}

    return collapse(
        teacher, batch, widths=(16, 24), steps=3, lr=1e-3, floors=floors, measure=measure,
        make_student=lambda w: BitLM(BitLMConfig(d_model=w, n_layers=1, n_heads=2, seq_len=72)),
    )  # fmt: skip


def test_collapse_stops_when_the_floors_are_met() -> None:
    attempts = _collapse({"C": 0.3, "S": 0.5})
    assert len(attempts) == 1 and attempts[0]["passed"] and attempts[0]["d_model"] == 16


def test_collapse_retries_once_with_a_wider_student() -> None:
    attempts = _collapse({"C": 0.3, "S": 0.9})
    assert [a["d_model"] for a in attempts] == [16, 24]
    assert [a["achieved"]["width"] for a in attempts] == [16.0, 24.0]  # type: ignore[index]
    assert not any(a["passed"] for a in attempts)
    assert attempts[1]["params"] > attempts[0]["params"]  # type: ignore[operator]


def test_distillation_after_training_writes_its_metrics(tmp_path: Path) -> None:
    reporter = ListReporter(tmp_path)
    train(RunConfig().with_overrides(TINY), reporter=reporter)
    last = reporter.last
    assert last["distill/attempts"] == 1.0 and last["distill/d_model"] == 16.0
    assert last["distill/params"] < last["model/params"]
    record = json.loads(
        (reporter.checkpoints[-1] / "artifacts" / "distilled_metrics.json").read_text()
    )
    assert record["floors"] == {"C": 0.3, "S": 0.5}
    attempt = record["attempts"][0]
    assert set(attempt["achieved"]) == {"K", "C", "S"}
    assert len(set(attempt["representatives"])) == 4
    achieved = attempt["achieved"]
    assert attempt["passed"] == (achieved["C"] >= 0.3 and achieved["S"] >= 0.5)


def test_distillation_retries_wider_when_a_floor_is_missed(tmp_path: Path) -> None:
    reporter = ListReporter(tmp_path)
    train(RunConfig().with_overrides({**TINY, "telemetry.floor_S": 1.0}), reporter=reporter)
    record = json.loads(
        (reporter.checkpoints[-1] / "artifacts" / "distilled_metrics.json").read_text()
    )
    assert [a["d_model"] for a in record["attempts"]] == [16, 24]  # 32 x 0.5, then x 1.5
    assert record["passed"] is False


def test_distill_keys_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"distill\.enabled need model\.arch 'bit_lm'"):
        RunConfig().with_overrides({"distill.enabled": True})
    with pytest.raises(ConfigError, match="k=32 must be <= candidates=16"):
        RunConfig().with_overrides({**TINY, "distill.k": 32})
    with pytest.raises(ConfigError, match=r"distill\.width_scale"):
        RunConfig().with_overrides({**TINY, "distill.width_scale": 1.0})
