"""Validation of early-exit inference: loss at the realized exits, mean exit layer, compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from orchestrator.spec import load_sweep, reported_metrics
from trainables.build import initial_architecture
from trainables.config import RunConfig
from trainables.data import ByteCorpus
from trainables.evaluation import evaluate
from trainables.exit_eval import evaluate_early_exit
from trainables.models import ByteLM, ByteLMConfig

TEXT = b"the quick brown fox jumps over the lazy dog. " * 40


def _cfg(**model: object) -> RunConfig:
    return RunConfig.from_dict(
        {
            "task": {"kind": "lm"},
            "model": {"d_model": 32, "n_layers": 4, "n_heads": 2, "seq_len": 16,
                      "early_exit": True, **model},
            "data": {"eval_batches": 2},
            "train": {"batch_size": 4},
        }
    )  # fmt: skip


def _model(cfg: RunConfig) -> ByteLM:
    torch.manual_seed(0)
    return ByteLM(ByteLMConfig(**initial_architecture(cfg, None).config)).eval()  # type: ignore[arg-type]


def _force(model: ByteLM, layer: int) -> None:
    """Every gate before ``layer`` never fires, the gate at ``layer`` always does."""
    with torch.no_grad():
        for index, gate in enumerate(model.exit_gates, start=1):
            gate.fc2.weight.zero_()
            gate.fc2.bias.fill_(10.0 if index == layer else -10.0)


def test_compute_frac_and_loss_at_the_realized_exit() -> None:
    cfg = _cfg()
    data = ByteCorpus.from_bytes(TEXT, val_frac=0.2)
    model = _model(cfg)
    _force(model, 2)  # every token exits after block 2 of 4
    metrics = evaluate_early_exit(model, model, data, cfg, seq_len=16)
    assert metrics["val/compute_frac"] == pytest.approx(0.5)
    assert metrics["val/exit_layer_mean"] == pytest.approx(2.0)
    assert metrics["route/exit_frac/2"] == pytest.approx(1.0)
    assert sum(metrics[f"route/exit_frac/{layer}"] for layer in range(1, 5)) == pytest.approx(1.0)
    # the loss is the cross-entropy of the exit-2 predictions over the same windows
    total = tokens = 0.0
    cos, sin = model.rope(16)
    with torch.no_grad():
        for x, y in data.iter_eval_batches("val", batch_size=4, seq_len=16, max_batches=2):
            h = model.embed(x)
            for block in model.blocks[:2]:
                h = block(h, cos, sin)
            ce = F.cross_entropy(model.exit_logits(h).reshape(-1, 256), y.reshape(-1))
            total += float(ce) * y.numel()
            tokens += y.numel()
    assert metrics["val/loss_exit"] == pytest.approx(total / tokens, rel=1e-5)


def test_evaluate_reports_the_trade_off_and_full_depth_loss() -> None:
    cfg = _cfg(exit_mode="sequence")
    data = ByteCorpus.from_bytes(TEXT, val_frac=0.2)
    model = _model(cfg)
    _force(model, 3)
    metrics = evaluate(model, data, cfg)
    assert metrics["val/compute_frac"] == pytest.approx(0.75)
    assert metrics["val/exit_layer_mean"] == pytest.approx(3.0)
    assert metrics["val/loss"] != pytest.approx(metrics["val/loss_exit"])  # full depth vs exits
    declared = reported_metrics(cfg)
    assert {k for k in metrics} <= declared | {"val/loss", "val/bpb"}


def test_early_exit_preset_front_is_loss_at_exits_against_compute() -> None:
    spec = load_sweep("early-exit")
    objectives = [(o.metric, o.mode) for o in spec.search.objective_list]
    assert objectives == [("val/loss_exit", "min"), ("val/compute_frac", "min")]
    assert spec.run.model.exit_mode == "token" and spec.run.model.exit_task_loss == "sampled"


def test_routing_warm_up_keeps_the_compute_cost_out_until_its_step() -> None:
    """``loss.route_warmup_frac``: no routing loss in the objective before that share of steps."""
    from trainables.objective import TrainingObjective

    cfg = RunConfig.from_dict(
        {
            "task": {"kind": "lm"},
            "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "seq_len": 16,
                      "early_exit": True},
            "loss": {"lambda_r": 0.5, "route_warmup_frac": 0.5},
            "train": {"steps": 10},
        }
    )  # fmt: skip
    model = _model(cfg).train()
    objective = TrainingObjective(cfg, model)
    idx = torch.randint(0, 256, (2, 16))
    out = model(idx, idx)
    before, terms = objective(out, 4)
    after, _ = objective(out, 5)
    assert float(before.detach()) == pytest.approx(float(out.task_loss.detach()))
    route = float(terms["loss/route"].detach())
    assert float(after.detach()) == pytest.approx(float(out.task_loss.detach()) + 0.5 * route)
    objective.close()
