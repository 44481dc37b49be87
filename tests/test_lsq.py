"""LSQ (Esser et al., ICLR 2020): values, step-size gradient, init, layers.

Freezing and explicit initialization of the step sizes: tests/test_step_size.py.
"""

from __future__ import annotations

import copy
import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from torch import nn

from trainables.quant import (
    DeployedLSQConv2d,
    DeployedLSQLinear,
    LSQConv2d,
    LSQLinear,
    LSQQuantizer,
    convert,
    lsq_grad_scale,
    lsq_quantize,
    lsq_range,
    prepare,
)

V = [-1.3, -0.45, -0.1, 0.0, 0.26, 0.74, 2.0]  # v / s with s = 0.5: -2.6 -0.9 -0.2 0 .52 1.48 4


def test_code_ranges_follow_the_paper() -> None:
    assert lsq_range(2, signed=True) == (2, 1)
    assert lsq_range(2, signed=False) == (0, 3)
    assert lsq_range(4, signed=True) == (8, 7)
    assert lsq_range(8, signed=True) == (128, 127)
    assert lsq_range(8, signed=False) == (0, 255)
    assert lsq_grad_scale(7, 1) == pytest.approx(1 / math.sqrt(7))


@pytest.mark.parametrize("bad", [1, 9, 0, 2.5, True])
def test_bits_outside_2_to_8_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r"bits must be an integer in 2\.\.8"):
        lsq_range(bad, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight_bits"):
        LSQLinear(4, 4, weight_bits=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="act_bits"):
        prepare(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), "lsq", act_bits=bad)


def test_forward_values_by_hand() -> None:
    v, s = torch.tensor(V), torch.tensor(0.5)
    # signed 2-bit: codes clip(round(v/s), -2, 1)
    signed = lsq_quantize(v, s, 2, 1, 1.0)
    assert signed.tolist() == [-1.0, -0.5, 0.0, 0.0, 0.5, 0.5, 0.5]
    # unsigned 2-bit: codes clip(round(v/s), 0, 3)
    unsigned = lsq_quantize(v, s, 0, 3, 1.0)
    assert unsigned.tolist() == [0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 1.5]


def test_step_gradient_equals_the_papers_formula_by_hand() -> None:
    v = torch.tensor(V, requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    upstream = torch.arange(1.0, 8.0)
    g = lsq_grad_scale(7, 1)
    (lsq_quantize(v, s, 2, 1, g) * upstream).sum().backward()
    # d v_q / d s per element (Esser et al. Eq. 3): -Q_N = -2 below, Q_P = 1 above,
    # round(v/s) - v/s inside: -0.9 -> -0.1, -0.2 -> 0.2, 0 -> 0, 0.52 -> 0.48
    by_hand = 1 * -2 + 2 * -0.1 + 3 * 0.2 + 4 * 0.0 + 5 * 0.48 + 6 * 1 + 7 * 1  # = 13.8
    assert s.grad is not None and v.grad is not None
    assert s.grad.item() == pytest.approx(13.8 / math.sqrt(7), rel=1e-5)
    assert by_hand == pytest.approx(13.8)
    # d v_q / d v: 1 strictly inside the clipping range, 0 outside (Eq. 5)
    assert v.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]


def _paper_pseudocode(v: torch.Tensor, s: torch.Tensor, q_n: int, q_p: int, g: float):
    """The paper's reference code (Esser et al., Appendix): gradscale + roundpass."""
    s_scaled = (s - s * g).detach() + s * g
    x = torch.clamp(v / s_scaled, -q_n, q_p)
    return (x.round() - x).detach() + x, s_scaled


@given(
    seed=st.integers(0, 2**16),
    bits=st.integers(2, 8),
    signed=st.booleans(),
    step=st.floats(0.01, 2.0),
)
def test_gradients_match_the_papers_reference_code(
    seed: int, bits: int, signed: bool, step: float
) -> None:
    gen = torch.Generator().manual_seed(seed)
    v0 = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 2**bits * step / 3
    upstream = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    q_n, q_p = lsq_range(bits, signed)
    g = lsq_grad_scale(v0.numel(), q_p)
    v1, s1 = v0.clone().requires_grad_(), torch.tensor(step, dtype=torch.float64).requires_grad_()
    out = lsq_quantize(v1, s1, q_n, q_p, g)
    (out * upstream).sum().backward()
    v2, s2 = v0.clone().requires_grad_(), torch.tensor(step, dtype=torch.float64).requires_grad_()
    codes, s_scaled = _paper_pseudocode(v2, s2, q_n, q_p, g)
    (codes * s_scaled * upstream).sum().backward()
    torch.testing.assert_close(out, (codes * s_scaled).detach())
    torch.testing.assert_close(s1.grad, s2.grad)
    # the value is on the grid and within half a step of v wherever v is not clipped
    k = out.detach() / step
    torch.testing.assert_close(k, k.round())
    assert k.round().min() >= -q_n and k.round().max() <= q_p
    inside = (v0 / step > -q_n) & (v0 / step < q_p)
    assert ((out.detach() - v0).abs()[inside] <= step / 2 + 1e-9).all()


def test_weight_and_activation_gradient_scales() -> None:
    weights = LSQQuantizer(3, signed=True)
    acts = LSQQuantizer(3, signed=True, kind="activation")
    w, x = torch.randn(16, 8), torch.randn(4, 5, 8)
    weights(w)
    acts(x)
    assert weights.grad_scale(w) == pytest.approx(1 / math.sqrt(128 * 3))
    # activations: N = features per example (5 * 8), not the batch's elements
    assert acts.grad_scale(x) == pytest.approx(1 / math.sqrt(40 * 3))


def test_step_initialization_from_weights_and_first_batch() -> None:
    layer = LSQLinear(8, 4, weight_bits=3, act_bits=4, act_signed=True)
    assert not layer.weight_quantizer.is_initialized
    x1, x2 = torch.randn(16, 8), 10 * torch.randn(16, 8)
    layer(x1)
    expected_w = 2 * layer.weight.abs().mean() / math.sqrt(3)  # Q_P = 3 for signed 3 bits
    expected_a = 2 * x1.abs().mean() / math.sqrt(7)  # Q_P = 7 for signed 4 bits
    torch.testing.assert_close(layer.weight_quantizer.step.detach(), expected_w)
    torch.testing.assert_close(layer.act_quantizer.step.detach(), expected_a)
    layer(x2)  # only the first batch initializes
    torch.testing.assert_close(layer.act_quantizer.step.detach(), expected_a)
    # the flag travels with the state dict: a fresh layer does not re-initialize on its batch
    fresh = LSQLinear(8, 4, weight_bits=3, act_bits=4, act_signed=True)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.act_quantizer.is_initialized
    fresh(x2)
    torch.testing.assert_close(fresh.act_quantizer.step.detach(), expected_a)


def test_auto_signedness_is_decided_by_the_first_batch_and_saved() -> None:
    model = prepare(
        nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2)),
        "lsq",
        first_last="same",
        act_bits=2,
    )
    model(torch.randn(4, 8))
    assert model[0].act_quantizer.q_range == (2, 1)  # raw input: signed
    assert model[2].act_quantizer.q_range == (0, 3)  # after ReLU: unsigned, 4 levels
    clone = prepare(
        nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2)),
        "lsq",
        first_last="same",
        act_bits=2,
    )
    clone.load_state_dict(model.state_dict())
    assert clone[2].act_quantizer.q_range == (0, 3)
    unsigned = LSQQuantizer(2, signed=False, kind="activation")
    assert unsigned(torch.tensor([[-1.0, 0.2, 0.6]])).min() == 0.0  # negative values clip to 0


def test_lambda_zero_is_full_precision_and_blends_in_between() -> None:
    linear = nn.Linear(8, 4)
    layer = LSQLinear.from_linear(linear, weight_bits=2, act_bits=2)
    x = torch.randn(5, 8)
    layer.set_quant_lambda(0.0)
    layer.eval_lambda = None
    torch.testing.assert_close(layer(x), linear(x))
    assert not layer.weight_quantizer.is_initialized  # lam = 0 never touches the steps
    layer.set_quant_lambda(1.0)
    layer(x)
    wq = layer.weight_quantizer.quantize_values(layer.weight)
    xq = layer.act_quantizer.quantize_values(x)
    layer.set_quant_lambda(0.25)
    w, xb = layer.weight + 0.25 * (wq - layer.weight), x + 0.25 * (xq - x)
    torch.testing.assert_close(layer(x), nn.functional.linear(xb, w, layer.bias))
    layer.eval_lambda = 1.0
    layer.eval()
    torch.testing.assert_close(layer(x), nn.functional.linear(xq, wq, layer.bias))


@given(
    seed=st.integers(0, 2**16),
    weight_bits=st.integers(2, 8),
    act_bits=st.one_of(st.none(), st.integers(2, 8)),
    signed=st.sampled_from([True, False, "auto"]),
)
def test_deployed_layers_equal_fake_quantized_evaluation(
    seed: int, weight_bits: int, act_bits: int | None, signed: bool | str
) -> None:
    torch.manual_seed(seed)
    options = {"weight_bits": weight_bits, "act_bits": act_bits, "act_signed": signed}
    linear = LSQLinear(12, 6, **options).eval()
    conv = LSQConv2d(3, 4, 3, padding=1, padding_mode="reflect", **options).eval()
    x, image = torch.randn(2, 3, 12), torch.randn(2, 3, 6, 6)
    fake_linear, fake_conv = linear(x), conv(image)
    dep_linear, dep_conv = linear.to_deployed(), conv.to_deployed()
    assert isinstance(dep_linear, DeployedLSQLinear) and isinstance(dep_conv, DeployedLSQConv2d)
    assert dep_linear.codes.dtype == torch.int8
    q_n, q_p = lsq_range(weight_bits, True)
    assert dep_linear.codes.min() >= -q_n and dep_linear.codes.max() <= q_p
    torch.testing.assert_close(dep_linear(x), fake_linear, atol=1e-5, rtol=0)
    torch.testing.assert_close(dep_conv(image), fake_conv, atol=1e-5, rtol=0)


def test_convert_needs_initialized_activation_steps() -> None:
    model = prepare(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), "lsq", first_last="same")
    with pytest.raises(RuntimeError, match="activation step size is not initialized"):
        convert(copy.deepcopy(model))
    model(torch.randn(2, 4))
    assert isinstance(convert(model)[0], DeployedLSQLinear)


def test_conv_layers_are_swapped_and_train() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten())
    prepare(model, "lsq", first_last="same", weight_bits=3, act_bits=3)
    assert isinstance(model[0], LSQConv2d) and isinstance(model[2], LSQConv2d)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert model[2].act_quantizer.step.grad is not None
    assert model[2].weight_quantizer.step.grad is not None


def _mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )


@pytest.mark.parametrize(
    ("first_last", "keep_head", "first", "head"),
    [
        ("8bit", True, 8, None),  # the head stays a plain nn.Linear (prepare's keep_head)
        ("8bit", False, 8, 8),
        ("fp", False, None, None),
        ("same", False, 2, 2),
    ],
)
def test_first_and_last_layer_policy(
    first_last: str, keep_head: bool, first: int | None, head: int | None
) -> None:
    model = prepare(
        _mlp(), "lsq", weight_bits=2, act_bits=2, first_last=first_last, keep_head=keep_head
    )

    def bits(layer: nn.Module) -> int | None:
        return layer.weight_bits if isinstance(layer, LSQLinear) else None

    assert (bits(model[0]), bits(model[2]), bits(model[4])) == (first, 2, head)
    if first == 8:
        assert model[0].act_bits == 8
    with pytest.raises(ValueError, match="first_last"):
        prepare(_mlp(), "lsq", first_last="int4")


def _digits() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32) / 16  # noqa: E731  (pixels 0..16)
    return as_x(x_tr), as_x(x_te), torch.tensor(y_tr), torch.tensor(y_te)


def test_two_bit_lsq_network_learns_digits() -> None:
    """W2A2 everywhere (first layer and head included) reaches >= 90% test accuracy."""
    x_tr, x_te, y_tr, y_te = _digits()
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    prepare(model, "lsq", weight_bits=2, act_bits=2, first_last="same", keep_head=False)
    assert all(isinstance(model[i], LSQLinear) and model[i].weight_bits == 2 for i in (0, 2, 4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        for idx in torch.randperm(len(x_tr), generator=gen).split(64):
            loss = nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    deployed = convert(model)
    with torch.no_grad():
        accuracy = (deployed(x_te).argmax(1) == y_te).float().mean().item()
    assert accuracy >= 0.90


def test_storage_bits_count_codes_and_the_step() -> None:
    from trainables.metrics import model_size

    layer = LSQLinear(16, 8, weight_bits=3)
    assert layer.storage_bits() == 3 * 128 + 32
    size = model_size(nn.Sequential(layer))
    assert size["model/bits_total"] == 3 * 128 + 32 + 32 * 8 + 32 * 2  # + fp32 bias and steps
