"""Model-wide bit usage and the bit-balanced cross-entropy (seed 000)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.quant import (
    AdaptiveBitLinear,
    BitBalancedCrossEntropy,
    collect_bit_usage,
    compute_total_bit_usage,
    count_trainable_parameters,
    prepare,
)


class FixedCost(nn.Module):
    """Any module with a ``bit_usage()`` method participates."""

    def __init__(self, bits: float) -> None:
        super().__init__()
        self.bits = bits

    def bit_usage(self) -> torch.Tensor:
        return torch.tensor(self.bits)


class Composite(nn.Module):
    """Reports for its whole subtree: its children must not be counted again."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = AdaptiveBitLinear(4, 4, init_bits=4.0)

    def bit_usage(self) -> torch.Tensor:
        return 2 * self.inner.bit_usage()


def _model() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4), nn.Linear(4, 3))
    return prepare(net, "adaptive", init_bits=5.0)  # two adaptive layers, float head


def test_total_and_per_module_usage() -> None:
    model = _model()
    model.add_module("extra", FixedCost(100.0))
    model.add_module("composite", Composite())
    usage = collect_bit_usage(model)
    assert set(usage) == {"0", "2", "extra", "composite"}
    assert usage["0"].item() == 5 * (64 + 8) and usage["2"].item() == 5 * (32 + 4)
    assert usage["composite"].item() == 2 * 4 * 20
    total = compute_total_bit_usage(model)
    assert total.dim() == 0 and total.dtype == torch.float32
    assert total.item() == 5 * 72 + 5 * 36 + 100 + 160
    total.backward()  # keeps autograd down to every bit-width
    assert model[0].bit_width.grad.item() == 72 and model.composite.inner.bit_width.grad == 40


def test_no_reporting_module_gives_zero() -> None:
    total = compute_total_bit_usage(nn.Sequential(nn.Linear(3, 3)))
    assert total.item() == 0.0 and total.device.type == "cpu"
    assert collect_bit_usage(nn.Linear(3, 3)) == {}


def test_loss_before_set_model_raises_a_clear_error() -> None:
    loss_fn = BitBalancedCrossEntropy(weight=0.1)
    with pytest.raises(RuntimeError, match=r"set_model\(model\)"):
        loss_fn(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="bit_loss_weight"):
        BitBalancedCrossEntropy(weight=-1.0)


def test_unnormalized_loss_adds_weight_times_total_bits() -> None:
    model = _model()
    loss_fn = BitBalancedCrossEntropy(weight=0.01).set_model(model)
    logits, targets = torch.randn(6, 3), torch.randint(0, 3, (6,))
    ce = nn.functional.cross_entropy(logits, targets)
    bits = 5 * 72 + 5 * 36
    torch.testing.assert_close(loss_fn(logits, targets), ce + 0.01 * bits)
    torch.testing.assert_close(loss_fn.last_terms["bit_penalty"], torch.tensor(0.01 * bits))
    assert "0.weight" not in loss_fn.state_dict()  # the loss does not own the model


def test_normalized_loss_divides_by_the_trainable_parameter_count() -> None:
    model = _model()
    loss_fn = BitBalancedCrossEntropy(weight=0.5, normalize=True).set_model(model)
    logits, targets = torch.randn(6, 3), torch.randint(0, 3, (6,))
    ce = nn.functional.cross_entropy(logits, targets)
    bits = 5 * 72 + 5 * 36
    trainable = 72 + 36 + 15 + 2  # two layers, the head, two bit-widths
    assert count_trainable_parameters(model) == trainable
    torch.testing.assert_close(loss_fn(logits, targets), ce + 0.5 * bits / trainable)
    model[3].requires_grad_(False)  # freezing the head changes the count
    torch.testing.assert_close(loss_fn(logits, targets), ce + 0.5 * bits / (trainable - 15))


def test_loss_gradient_lowers_the_total_bits() -> None:
    model = _model()
    loss_fn = BitBalancedCrossEntropy(weight=1.0, normalize=True).set_model(model)
    opt = torch.optim.SGD([model[0].bit_width, model[2].bit_width], lr=2.0)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    start = compute_total_bit_usage(model).item()
    loss_fn(model(x), y).backward()
    assert model[0].bit_width.grad.item() > 0 and model[2].bit_width.grad.item() > 0
    for _ in range(5):
        opt.step()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
    assert compute_total_bit_usage(model).item() < start


def test_sequence_logits_are_flattened() -> None:
    model = _model()
    loss_fn = BitBalancedCrossEntropy(weight=0.0).set_model(model)
    logits, targets = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    expected = nn.functional.cross_entropy(logits.reshape(10, 7), targets.reshape(10))
    torch.testing.assert_close(loss_fn(logits, targets), expected)


# ---------------------------------------------------------------- in the trainer (seed 000)
def _digits_cfg(**loss: object) -> object:
    from trainables.config import RunConfig

    return RunConfig.from_dict(
        {
            "task": {"kind": "vision"},
            "data": {"source": "digits"},
            "model": {"arch": "mlp", "hidden": [32]},
            "quant": {"scheme": "adaptive", "init_bits": 6.0},
            "loss": loss,
        }
    )


def test_seed_defaults_and_the_loss_fn_key() -> None:
    from trainables.config import ConfigError, RunConfig

    loss = RunConfig().loss
    assert loss.fn == "ce" and loss.bit_loss_normalize is False  # seed 000's defaults
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"loss": {"fn": "bit_balanced_ce"}})  # the ternary scheme
    assert info.value.problems[0][0] == "loss.fn" and "adaptive" in info.value.problems[0][1]
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"quant": {"scheme": "adaptive"}, "loss": {"bit_loss_weight": 0.1}})
    assert info.value.problems[0][0] == "loss.bit_loss_weight"
    assert "loss.fn: bit_balanced_ce" in info.value.problems[0][1]


@pytest.mark.parametrize("normalize", [False, True])
def test_the_trainer_loss_is_bit_balanced_cross_entropy(normalize: bool) -> None:
    """``loss.fn: bit_balanced_ce``: the objective's total is the seed's loss on the logits."""
    from trainables.build import build_model, initial_architecture, load_task_data
    from trainables.objective import TrainingObjective

    cfg = _digits_cfg(fn="bit_balanced_ce", bit_loss_weight=1e-4, bit_loss_normalize=normalize)
    data = load_task_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, initial_architecture(cfg, data)).eval()  # eval: nearest rounding
    objective = TrainingObjective(cfg, model)
    x, y = data.train_images[:32], data.train_labels[:32]
    out = model(x, targets=y)
    total, terms = objective(out, 0)
    seed_loss = BitBalancedCrossEntropy(1e-4, normalize).set_model(model)
    torch.testing.assert_close(total, seed_loss(out.logits, y))
    bits = compute_total_bit_usage(model)
    expected_bits = bits / count_trainable_parameters(model) if normalize else bits
    torch.testing.assert_close(terms["loss/bits"], expected_bits)
    # the penalty reaches the bit-widths through the trainer's loss: d(total - CE)/db = w * numel
    layers = [m for m in model.modules() if isinstance(m, AdaptiveBitLinear)]
    total.backward()
    g_total = [m.bit_width.grad.clone() for m in layers]
    model.zero_grad()
    model(x, targets=y).task_loss.backward()
    scale = 1e-4 / (count_trainable_parameters(model) if normalize else 1)
    for (
        layer,
        g,
    ) in zip(layers, g_total, strict=True):
        numel = layer.weight.numel() + layer.bias.numel()
        torch.testing.assert_close(g - layer.bit_width.grad, torch.tensor(scale * numel))
    plain = TrainingObjective(_digits_cfg(), model)  # loss.fn: ce
    total_ce, terms_ce = plain(model(x, targets=y), 0)
    assert "loss/bits" not in terms_ce
    torch.testing.assert_close(total_ce, terms_ce["loss/task"])


def test_bit_widths_get_their_own_learning_rate_and_no_decay() -> None:
    from trainables.quant import bit_width_parameters, param_groups

    model = _model()
    groups = param_groups(model, lr=1e-3, weight_decay=0.1, bit_lr=0.05)
    assert len(groups) == 2
    assert groups[1]["params"] == bit_width_parameters(model) and len(groups[1]["params"]) == 2
    assert groups[1]["lr"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert groups[1]["lr_scale"] == pytest.approx(50.0)
    n_all = sum(1 for p in model.parameters())
    assert len(groups[0]["params"]) + 2 == n_all
    assert len(param_groups(model, lr=1e-3, weight_decay=0.1, bit_lr=None)) == 1


BUDGET_WEIGHTS = (1e-4, 1e-2, 1.0)


def test_bit_budget_preset_trades_bits_against_accuracy() -> None:
    """Seed 000 on the ``bit-budget`` preset (shortened to 300 steps): total bits fall as the
    bit-loss weight rises, by more than 2x over the searched range, the task loss rises, and the
    layers learn different bit-widths. (Before bit-widths had their own learning rate every
    weight ended at the same bits.)"""
    from orchestrator.spec import load_sweep
    from trainables.build import load_task_data
    from trainables.loop import train
    from trainables.reporting import ListReporter

    spec = load_sweep("bit-budget")
    searched = spec.search.space["loss.bit_loss_weight"]
    assert searched.low <= min(BUDGET_WEIGHTS) and max(BUDGET_WEIGHTS) <= searched.high
    base = spec.run.with_overrides({"train.steps": 300, "train.eval_every": 300})
    data = load_task_data(base)
    finals = []
    for weight in BUDGET_WEIGHTS:
        reporter = ListReporter()
        train(base.with_overrides({"loss.bit_loss_weight": weight}), data=data, reporter=reporter)
        finals.append(reporter.last)
    totals = [m["model/bits_total"] for m in finals]
    assert totals[0] > totals[1] > totals[2], totals
    assert totals[0] > 2.0 * totals[2], totals
    assert finals[2]["val/loss"] > finals[0]["val/loss"]
    widths = [{k: v for k, v in m.items() if k.startswith("bits/")} for m in finals]
    assert all(len(w) == 3 for w in widths)  # both hidden layers and the head learn bits
    assert any(len(set(w.values())) > 1 for w in widths), widths
