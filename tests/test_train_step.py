"""Seed 003's training knobs: gradient accumulation, bf16 autocast, the pre-clip gradient norm."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.build import build_model, initial_architecture
from trainables.config import RunConfig
from trainables.data import ByteCorpus, pydocs_bytes
from trainables.loop import train
from trainables.objective import TrainingObjective
from trainables.reporting import ListReporter
from trainables.train_step import accumulate_gradients, autocast, clip_gradients

BASE = {"model.d_model": 32, "model.n_heads": 2, "model.seq_len": 16, "train.batch_size": 4,
        "train.steps": 4, "train.eval_every": 2, "data.eval_batches": 1}  # fmt: skip


@pytest.fixture(scope="module")
def corpus() -> ByteCorpus:
    return ByteCorpus.from_bytes(pydocs_bytes()[:20_000], val_frac=0.1)


def _model_and_objective(cfg: RunConfig, corpus: ByteCorpus) -> tuple[nn.Module, TrainingObjective]:
    torch.manual_seed(0)
    model = build_model(cfg, initial_architecture(cfg, corpus))
    return model, TrainingObjective(cfg, model)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_two_accumulated_halves_equal_one_full_batch(corpus: ByteCorpus) -> None:
    cfg = RunConfig.from_flat(BASE)
    x, y = corpus.get_batch("train", 8, 16, torch.Generator().manual_seed(1))  # [8, 16]
    full_model, full_objective = _model_and_objective(cfg, corpus)
    accum_model, accum_objective = _model_and_objective(cfg, corpus)
    full = accumulate_gradients(full_model, full_objective, [(x, y)], 0)
    halves = [(x[:4], y[:4]), (x[4:], y[4:])]
    accumulated = accumulate_gradients(accum_model, accum_objective, halves, 0)
    reference, grads = _grads(full_model), _grads(accum_model)
    assert reference.keys() == grads.keys() and len(grads) > 4
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6, msg=name)
    assert accumulated.samples == full.samples == 8
    assert math.isclose(accumulated.losses["train/loss"], full.losses["train/loss"], rel_tol=1e-5)
    # without dividing by the number of micro-batches the gradient would be twice as large
    assert float(sum(g.norm() for g in grads.values())) < 1.5 * float(
        sum(g.norm() for g in reference.values())
    )


def test_loop_with_accumulation_follows_the_same_batches(corpus: ByteCorpus) -> None:
    """accum 2 x batch 4 and batch 8 draw the same windows; their first-step losses agree."""
    one = ListReporter()
    train(RunConfig.from_flat({**BASE, "train.batch_size": 8, "train.steps": 1,
                               "train.eval_every": 1}), data=corpus, reporter=one)  # fmt: skip
    two = ListReporter()
    train(RunConfig.from_flat({**BASE, "train.grad_accum": 2, "train.steps": 1,
                               "train.eval_every": 1}), data=corpus, reporter=two)  # fmt: skip
    assert math.isclose(one.last["train/loss"], two.last["train/loss"], rel_tol=1e-5)
    assert math.isclose(one.last["train/grad_norm"], two.last["train/grad_norm"], rel_tol=1e-3)


def test_bf16_autocasts_the_matmuls_and_trains(corpus: ByteCorpus) -> None:
    cfg = RunConfig.from_flat({**BASE, "train.precision": "bf16"})
    model, objective = _model_and_objective(cfg, corpus)
    seen: list[torch.dtype] = []
    head = model.head if hasattr(model, "head") else [m for m in model.modules()
                                                      if isinstance(m, nn.Linear)][-1]  # fmt: skip
    head.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    x, y = corpus.get_batch("train", 4, 16, torch.Generator().manual_seed(2))
    result = accumulate_gradients(model, objective, [(x, y)], 0, precision="bf16")
    assert seen == [torch.bfloat16]
    assert math.isfinite(result.losses["train/loss"])
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    with autocast("fp32", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    reporter = ListReporter()
    train(cfg, data=corpus, reporter=reporter)
    assert math.isfinite(reporter.last["val/loss"]) and reporter.last["train/grad_norm"] > 0


def test_grad_norm_is_the_pre_clip_total_norm(corpus: ByteCorpus) -> None:
    cfg = RunConfig.from_flat(BASE)
    model, objective = _model_and_objective(cfg, corpus)
    x, y = corpus.get_batch("train", 4, 16, torch.Generator().manual_seed(3))
    accumulate_gradients(model, objective, [(x, y)], 0)
    expected = float(torch.cat([p.grad.flatten() for p in model.parameters()
                                if p.grad is not None]).norm())  # fmt: skip
    limit = expected / 4
    assert math.isclose(clip_gradients(model.parameters(), limit), expected, rel_tol=1e-5)
    after = float(torch.cat([p.grad.flatten() for p in model.parameters()
                             if p.grad is not None]).norm())  # fmt: skip
    assert math.isclose(after, limit, rel_tol=1e-3)  # and it did clip
    assert math.isclose(clip_gradients(model.parameters(), None), after, rel_tol=1e-5)


def test_activation_memory_is_measured_on_the_first_micro_batch_only(corpus: ByteCorpus) -> None:
    cfg = RunConfig.from_flat(BASE)
    x, y = corpus.get_batch("train", 8, 16, torch.Generator().manual_seed(1))
    small, large = (x[:2], y[:2]), (x, y)
    model, objective = _model_and_objective(cfg, corpus)
    plain = accumulate_gradients(model, objective, [small, large], 0)
    reference = _grads(model)
    model.zero_grad(set_to_none=True)
    measured = accumulate_gradients(model, objective, [small, large], 0, measure_activations=True)
    assert plain.saved_activation_bytes is None
    for name, grad in _grads(model).items():  # the hooks change nothing the step computes
        torch.testing.assert_close(grad, reference[name], rtol=0, atol=0, msg=name)
    assert measured.losses == plain.losses
    model.zero_grad(set_to_none=True)
    alone = accumulate_gradients(model, objective, [small], 0, measure_activations=True)
    model.zero_grad(set_to_none=True)
    first_large = accumulate_gradients(model, objective, [large], 0, measure_activations=True)
    # the batch of 2 alone, not both: the batch of 8 after it is not measured
    assert measured.saved_activation_bytes == alone.saved_activation_bytes > 0
    assert first_large.saved_activation_bytes > 3 * alone.saved_activation_bytes  # 4x the samples


def test_loop_reports_grad_norm(corpus: ByteCorpus) -> None:
    reporter = ListReporter()
    train(RunConfig.from_flat({**BASE, "train.grad_clip": None}), data=corpus, reporter=reporter)
    norms = [m["train/grad_norm"] for m in reporter.metrics]
    assert len(norms) == 2 and all(n > 0 and math.isfinite(n) for n in norms)


def test_config_ranges_name_the_key() -> None:
    from trainables.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.grad_accum"):
        RunConfig.from_flat({"train.grad_accum": 0})
    with pytest.raises(ConfigError, match=r"train\.precision"):
        RunConfig.from_flat({"train.precision": "fp16"})
