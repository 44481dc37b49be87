"""Bin regularization (Han et al., ICCV 2021): W-BR, A-BR, capture hooks, stages and the banner."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from torch import nn

from trainables.quant import (
    ActivationCapture,
    BinRegConfig,
    LSQLinear,
    activation_bin_regularization,
    bin_reg_loss,
    bin_reg_terms,
    bin_regularization,
    br_active,
    br_warmup_steps,
    lsq_range,
    prepare,
    render_br_banner,
    weight_bin_regularization,
)


def _reference(values: torch.Tensor, step: float, q_n: int, q_p: int) -> float:
    """Bin by bin, as the paper writes it: sum of (bin mean - level)^2 + population variance."""
    flat = values.detach().double().reshape(-1)
    codes = torch.clamp(flat / step, -q_n, q_p).round()
    total = 0.0
    for code in range(-q_n, q_p + 1):
        members = flat[codes == code]
        if len(members) == 0:
            continue  # empty bins are skipped
        total += (members.mean().item() - code * step) ** 2
        if len(members) > 1:  # a single value has no variance
            total += members.var(unbiased=False).item()
    return total


def test_br_by_hand_on_a_small_tensor() -> None:
    # s = 1, signed 2 bits (codes -2..1). Bins: -2: {-2.2, -1.9}, -1: {-1.0}, 0: {0.3, 0.1},
    # 1: {0.9, 1.2, 5.0} (5.0 is clipped into the top bin)
    values = torch.tensor([-2.2, -1.9, -1.0, 0.3, 0.1, 0.9, 1.2, 5.0])
    bin_m2 = (-2.05 + 2) ** 2 + 0.15**2
    bin_0 = 0.2**2 + 0.1**2
    mean_1 = 7.1 / 3
    bin_1 = (mean_1 - 1) ** 2 + (0.9**2 + 1.2**2 + 5.0**2) / 3 - mean_1**2
    loss = bin_regularization(values, torch.tensor(1.0), 2, 1)
    assert loss.item() == pytest.approx(bin_m2 + 0.0 + bin_0 + bin_1, rel=1e-5)


@given(
    seed=st.integers(0, 2**16),
    bits=st.integers(2, 5),
    signed=st.booleans(),
    step=st.floats(0.05, 1.0),
)
def test_br_matches_the_bin_by_bin_reference(seed: int, bits: int, signed: bool, step: float):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(6, 9, generator=gen) * step * 2 ** (bits - 1)
    q_n, q_p = lsq_range(bits, signed)
    loss = bin_regularization(values, torch.tensor(step), q_n, q_p)
    assert loss.item() >= 0.0
    assert loss.item() == pytest.approx(_reference(values, step, q_n, q_p), rel=1e-4, abs=1e-6)


@given(seed=st.integers(0, 2**16), bits=st.integers(2, 8), step=st.floats(0.01, 1.0))
def test_br_is_zero_when_every_value_sits_on_its_level(seed: int, bits: int, step: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    q_n, q_p = lsq_range(bits, True)
    codes = torch.randint(-q_n, q_p + 1, (40,), generator=gen).float()
    step_t = torch.tensor(step)
    assert bin_regularization(codes * step_t, step_t, q_n, q_p).item() == pytest.approx(0, abs=1e-9)
    # one value off its level makes it positive
    nudged = codes * step_t
    nudged[0] += 0.3 * step
    assert bin_regularization(nudged, step_t, q_n, q_p).item() > 0


def test_w_br_falls_under_gradient_descent_and_reaches_the_weight_step() -> None:
    model = prepare(
        nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 4)),
        "lsq",
        first_last="same",
        weight_bits=2,
        act_bits=None,
        keep_head=False,
    )
    start = weight_bin_regularization(model)
    start.backward()
    assert all(m.weight_quantizer.step.grad.abs() > 0 for m in model)  # always reaches s
    torch.testing.assert_close(  # the model's term is the mean over layers
        start.detach(),
        torch.stack([bin_regularization(m.weight, m.weight_quantizer.step, 2, 1) for m in model])
        .mean()
        .detach(),
    )
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(60):
        opt.zero_grad()
        weight_bin_regularization(model).backward()
        opt.step()
    assert weight_bin_regularization(model).item() < 0.1 * start.item()


def test_gradient_to_the_step_is_optional() -> None:
    values = torch.randn(50, requires_grad=True)
    step = torch.tensor(0.4, requires_grad=True)
    bin_regularization(values, step, 2, 1, backprop_to_step=False).backward()
    assert step.grad is None and values.grad is not None and values.grad.abs().sum() > 0
    bin_regularization(values, step, 2, 1, backprop_to_step=True).backward()
    assert step.grad is not None and step.grad.abs() > 0


def _model() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    return prepare(net, "lsq", weight_bits=2, act_bits=2)


@pytest.mark.parametrize("flag", [False, True])
def test_a_br_reaches_the_activation_step_only_with_the_flag(flag: bool) -> None:
    # first layer and head in full precision: the only activation quantizer is layer 2's, and the
    # activation it quantizes is produced by a float layer (no other step size upstream)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    model = prepare(net, "lsq", weight_bits=2, act_bits=2, first_last="fp")
    with ActivationCapture(model) as capture:
        model(torch.randn(32, 8))
        assert [name for name, _, _ in capture.records] == ["2.act_quantizer"]
        loss = activation_bin_regularization(capture, backprop_to_alpha=flag)
        assert loss.item() > 0
        loss.backward()
    # A-BR shapes the activations: its gradient reaches the layer that produced them
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    act_step = model[2].act_quantizer.step
    if flag:
        assert act_step.grad is not None and act_step.grad.abs() > 0
    else:
        assert act_step.grad is None
    assert model[2].weight_quantizer.step.grad is None  # A-BR never touches weight steps


def test_capture_registers_nothing_when_disabled_and_cleans_up() -> None:
    model = _model()

    def hooks() -> int:
        return sum(len(m._forward_hooks) for m in model.modules())

    with ActivationCapture(model, enabled=False) as capture:
        assert capture.num_hooks == 0 and hooks() == 0
        model(torch.randn(4, 8))
        assert capture.records == []
        assert activation_bin_regularization(capture).item() == 0.0
    with ActivationCapture(model) as capture:
        assert capture.num_hooks == hooks() == 2
        model.eval()
        model(torch.randn(4, 8))  # evaluation is not captured
        model.train()
        for m in (model[0], model[2]):
            m.set_quant_lambda(0.0)
        model(torch.randn(4, 8))  # nor full precision (nothing is quantized)
        assert capture.records == []
        for m in (model[0], model[2]):
            m.set_quant_lambda(1.0)
        model(torch.randn(4, 8))
        assert len(capture.records) == 2
        capture.clear()
        assert capture.records == []
        model(torch.randn(4, 8))
    assert hooks() == 0 and capture.records == []


def test_config_validation_names_the_setting() -> None:
    with pytest.raises(ValueError, match="lambda_br must be >= 0"):
        BinRegConfig(lambda_br=-0.1)
    with pytest.raises(ValueError, match="lambda_br_act must be >= 0"):
        BinRegConfig(lambda_br_act=-1.0)
    with pytest.raises(ValueError, match="br_warmup_frac"):
        BinRegConfig(br_warmup_frac=1.5)
    assert not BinRegConfig().enabled and BinRegConfig(lambda_br_act=0.5).enabled


def test_terms_are_the_enabled_ones_and_weighted_by_the_loss() -> None:
    model = _model()
    with ActivationCapture(model) as capture:
        model(torch.randn(16, 8))
        assert bin_reg_terms(model, BinRegConfig(), capture) == {}
        config = BinRegConfig(lambda_br=2.0, lambda_br_act=0.5)
        terms = bin_reg_terms(model, config, capture)
        assert set(terms) == {"br_w", "br_act"}
        w_br, a_br = weight_bin_regularization(model), activation_bin_regularization(capture)
        torch.testing.assert_close(terms["br_w"], w_br)  # unweighted
        torch.testing.assert_close(terms["br_act"], a_br)
        torch.testing.assert_close(bin_reg_loss(terms, config), 2.0 * w_br + 0.5 * a_br)
        only_w = BinRegConfig(lambda_br=1.0)
        assert set(bin_reg_terms(model, only_w, capture)) == {"br_w"}
        assert bin_reg_loss({}, only_w) is None
    with pytest.raises(ValueError, match="ActivationCapture"):
        bin_reg_terms(model, BinRegConfig(lambda_br_act=1.0))


def test_two_stages() -> None:
    assert br_warmup_steps(100, 0.3) == 30 and br_warmup_steps(100, 0.29) == 29
    assert not br_active(29, 100, 0.3) and br_active(30, 100, 0.3)
    assert br_active(0, 100, 0.0) and not br_active(99, 100, 1.0)
    with pytest.raises(ValueError, match="br_warmup_frac"):
        br_active(0, 10, -0.1)


@given(total=st.integers(1, 500), frac=st.floats(0.0, 1.0), step=st.integers(0, 499))
def test_once_active_br_stays_active(total: int, frac: float, step: int) -> None:
    if br_active(step, total, frac):
        assert br_active(step + 1, total, frac)
    warmup = br_warmup_steps(total, frac)
    assert sum(not br_active(s, total, frac) for s in range(total)) == warmup


def test_banner_reflects_the_flags() -> None:
    paper = render_br_banner(BinRegConfig(lambda_br=1.0, freeze_alpha=True), 100, unit="Epochs")
    assert "Starting 2-Stage QAT+BR Training" in paper
    assert "Stage 1 (Warmup): Epochs 1-30 (LSQ only)" in paper
    assert "Stage 2 (BR): Epochs 31-100" in paper
    assert "BR Configuration:" in paper and "Alpha Control:" in paper
    assert "W-BR (weights): λ=1.0 [ENABLED]" in paper
    assert "A-BR (activations): λ=0.0 [DISABLED]" in paper
    assert "Gradients to alpha: Always enabled (paper-faithful, weights are stable)" in paper
    assert "Gradients to alpha: False (default: False, recommended)" in paper
    assert "Freeze alpha after warmup: True" in paper
    assert paper.splitlines()[0] == "=" * 80 and paper.splitlines()[-1] == "=" * 80
    moving = render_br_banner(
        BinRegConfig(
            lambda_br=0.0, lambda_br_act=2.0, br_backprop_to_alpha_act=True, br_warmup_frac=0.5
        ),
        1000,
    )
    assert "Stage 1 (Warmup): Steps 1-500 (LSQ only)" in moving
    assert "W-BR (weights): λ=0.0 [DISABLED]" in moving
    assert "A-BR (activations): λ=2.0 [ENABLED]" in moving
    assert "Gradients to alpha: True (default: False, recommended)" in moving
    assert "Freeze alpha after warmup: False" in moving
    assert "no BR term enabled" in render_br_banner(BinRegConfig(), 10)


def test_lsq_layer_br_uses_the_layers_current_grid() -> None:
    layer = LSQLinear(4, 2, weight_bits=2, act_bits=None, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-0.6, -0.3, 0.0, 0.3], [0.3, 0.0, -0.3, -0.6]]))
        layer.weight_quantizer.initialize(layer.weight)
        layer.weight_quantizer.step.fill_(0.3)  # every weight on a level of step 0.3
    assert weight_bin_regularization(layer).item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        layer.weight_quantizer.step.fill_(0.25)  # same weights, another grid: off the levels
    assert weight_bin_regularization(layer).item() > 1e-4


# ---------------------------------------------------------------- the br-ablation preset, trained
def _preset_run(label: str, steps: int = 20) -> object:
    """The ``br-ablation`` preset's run config for one scenario, shortened to ``steps``."""
    from orchestrator.spec import load_sweep

    spec = load_sweep("br-ablation")
    scenario = next(v for v in spec.search.space["scenario"].values if v["label"] == label)
    overrides = {**scenario["set"], "train.steps": steps, "train.eval_every": steps // 2}
    return spec.run.with_overrides(overrides)


def test_br_ablation_stage_one_is_pure_lsq() -> None:
    """Seed 002's stage 1 is LSQ only: every LSQ layer quantizes fully from step 0 (the lam
    warm-up is for the ternary schemes), and the run reports lam = 1."""
    from trainables.loop import train
    from trainables.quant import LSQLayer
    from trainables.reporting import ListReporter

    cfg = _preset_run("W+A stable")
    assert cfg.quant.scheme == "lsq" and cfg.schedule.lambda_warmup_frac > 0
    reporter = ListReporter()
    model = train(cfg, stop_after=1, reporter=reporter).model  # holds the lam of step 0
    layers = [m for m in model.modules() if isinstance(m, LSQLayer)]
    assert len(layers) == 2  # the two convolutions (the head stays in full precision)
    assert all(layer.quant_lambda == 1.0 for layer in layers)
    assert reporter.metrics[0]["quant/lambda"] == 1.0


def test_br_ablation_frozen_step_sizes_stay_bit_identical_after_the_br_start() -> None:
    from trainables.loop import train
    from trainables.quant import step_size_parameters

    cfg = _preset_run("W+A stable")
    start = br_warmup_steps(cfg.train.steps, cfg.loss.br_warmup_frac)
    assert 0 < start < cfg.train.steps
    initial = [p.detach().clone() for p in step_size_parameters(train(cfg, stop_after=1).model)]
    at_start = train(cfg, stop_after=start).model
    frozen = [p.detach().clone() for p in step_size_parameters(at_start)]
    # stage 1 trained the step sizes (LSQ), so "unchanged afterwards" means something
    assert any(not torch.equal(a, b) for a, b in zip(initial, frozen, strict=True))
    full = train(cfg).model
    final = step_size_parameters(full)
    assert all(not p.requires_grad for p in final)
    assert all(torch.equal(a, b) for a, b in zip(final, frozen, strict=True))
    # ...while the weights went on training under BR
    weights = [m.weight for m in full.modules() if isinstance(m, LSQLinear | nn.Conv2d)]
    before = [m.weight for m in at_start.modules() if isinstance(m, LSQLinear | nn.Conv2d)]
    assert any(not torch.equal(a, b) for a, b in zip(weights, before, strict=True))
