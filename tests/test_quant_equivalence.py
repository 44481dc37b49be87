"""The optimized quantized layers against straightforward references written from the formulas.

Each reference (:mod:`benchmarks.reference_layers`, the one copy shared with the benchmarks) is
the plain autograd formulation of its paper's formula (BitNet b1.58's absmean / absmax quantizers
with the ``x + (q - x).detach()`` straight-through estimator, LSQ's gradients, the adaptive
bit-width's gradient through the scale). The optimized layers must give
the same outputs and gradients (to weights, inputs, LSQ step sizes and the bit-width) to 1e-6 in
float32:

* element tensors (outputs, weight and input gradients): ``max|a - b| <= 1e-6 * max(1, max|b|)``,
  i.e. relative to the tensor's largest magnitude where that exceeds 1;
* scalar gradients that are sums over a tensor (step sizes, bit-width):
  ``|a - b| <= 1e-6 * sum_i |c_i|`` where ``c_i`` are the summed per-element contributions,
  computed here in float64 from the formula (the scale at which float32 summation errs).

The quantization decisions themselves (codes, rounding) must agree exactly: the optimized
quantizers are checked to be bit for bit equal to the formulas.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from benchmarks.reference_layers import (
    REFERENCE_LAYERS,
    absmax_bits_contributions,
    absmax_fake_quantize_autograd,
    activation_values,
    adaptive_reference,
    bitlinear_reference,
    fwht_stack,
    lsq_linear_reference,
    lsq_step_contributions,
    pack_reference,
    ternary_values,
)
from trainables.quant import (
    AdaptiveBitLinear,
    BitLinear,
    HBitLinear,
    LSQLinear,
    TernaryLinear,
    absmax_fake_quantize,
    activation_quantize,
    convert,
    fwht,
    hadamard_matrix,
    hadamard_transform,
    pack_ternary,
    prepare,
    unpack_ternary,
)
from trainables.quant.checkpoint import load_packed_into, save_packed_checkpoint
from trainables.quant.quantizers import activation_quantize_values, ternary_dequantize_values
from trainables.quant.ternary_linear import PackedTernaryLinear, configure_ternary

TOL = 1e-6


def assert_close_scaled(actual: Tensor, expected: Tensor, tol: float = TOL) -> None:
    """``max|a - b| <= tol * max(1, max|b|)``: absolute below 1, relative to the peak above."""
    assert actual.shape == expected.shape
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    err = (actual.detach().double() - expected.detach().double()).abs().max().item()
    assert err <= tol * scale, f"max error {err:.3g} > {tol:g} * {scale:.3g}"


def assert_sum_close(actual: Tensor, contributions: Tensor, tol: float = TOL) -> None:
    """A gradient that is ``sum(contributions)``, to ``tol * sum|contributions|``."""
    c = contributions.detach().double()
    expected, scale = c.sum().item(), c.abs().sum().item()
    err = abs(actual.detach().double().item() - expected)
    assert err <= tol * max(scale, 1e-30), f"error {err:.3g} > {tol:g} * {scale:.3g}"


def run(
    layer: nn.Module, forward: Callable[[Tensor], Tensor], x: Tensor, grad: Tensor
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Output, input gradient and parameter gradients of one forward/backward."""
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    y = forward(x)
    y.backward(grad)
    assert x.grad is not None
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    return y.detach(), x.grad.clone(), grads


def data(width: int, out: int, tokens: int = 96, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, width, generator=gen) * 3.0
    return x, torch.randn(tokens, out, generator=gen)


# ---------------------------------------------------------------- tests: quantizer values
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_activation_values_are_the_formula_bit_for_bit(bits: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(bits)
    for scale in (1e-7, 1e-2, 1.0, 1e4, 1e30):
        x = (torch.randn(33, 70, generator=gen) * scale).to(dtype)
        x[0] = 0.0
        x[1, 3] = float("inf")
        x[2, 5] = float("nan")
        expected = activation_values(x, bits)
        actual = activation_quantize_values(x, bits)
        assert torch.equal(actual.nan_to_num(7.0), expected.nan_to_num(7.0))


def test_activation_quantize_gradient_is_the_identity() -> None:
    x = torch.randn(5, 40, requires_grad=True)
    g = torch.randn(5, 40)
    activation_quantize(x, 8).backward(g)
    assert x.grad is not None and torch.equal(x.grad, g)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_ternary_values_are_the_formula_bit_for_bit(scale: float) -> None:
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(1)) * scale
    w[0, :4] = 0.0
    assert torch.equal(ternary_dequantize_values(w), ternary_values(w))


# ---------------------------------------------------------------- tests: layers
@pytest.mark.parametrize("cls", [BitLinear, HBitLinear])
@pytest.mark.parametrize("lam", [1.0, 0.3, 0.0])
@pytest.mark.parametrize("act_bits", [8, 4, None])
def test_bitlinear_matches_reference(
    cls: type[BitLinear], lam: float, act_bits: int | None
) -> None:
    torch.manual_seed(0)
    layer = cls(64, 48, act_bits=act_bits, input_norm=act_bits == 4).train()
    if layer.norm is not None:  # a non-uniform gain: the order of transform and norm shows
        with torch.no_grad():
            layer.norm.weight.uniform_(0.5, 2.0)
    layer.set_quant_lambda(lam)
    ref = copy.deepcopy(layer)
    x, g = data(64, 48)
    y, gx, grads = run(layer, layer, x, g)
    keep: dict[str, Tensor] = {}
    y_r, gx_r, grads_r = run(ref, lambda v: bitlinear_reference(ref, v, lam, keep=keep), x, g)
    assert_close_scaled(y, y_r)
    assert_close_scaled(gx, gx_r)
    assert grads.keys() == grads_r.keys()
    for name in grads:
        assert_close_scaled(grads[name], grads_r[name])


@pytest.mark.parametrize("cls", [BitLinear, HBitLinear])
def test_bitlinear_evaluation_and_quant_error_match_reference(cls: type[BitLinear]) -> None:
    torch.manual_seed(1)
    layer = cls(128, 32, input_norm=True)
    layer.set_quant_lambda(0.0)  # training lam; evaluation still uses lam = 1
    layer.eval()
    x, _ = data(128, 32)
    with torch.no_grad():
        assert_close_scaled(layer(x), bitlinear_reference(layer, x, 1.0))
    layer.train()
    layer.set_quant_lambda(1.0)
    layer.record_quant_error = True
    layer(x)
    w = layer.weight
    gamma = w.abs().mean()
    w_q = torch.clamp(torch.round(w / (gamma.detach() + layer.eps)), -1, 1).detach() * gamma
    assert layer.recorded_quant_error is not None
    assert_close_scaled(layer.recorded_quant_error, (w - w_q).pow(2).mean())


@pytest.mark.parametrize("cls", [BitLinear, HBitLinear])
def test_bitlinear_under_autocast_trains(cls: type[BitLinear]) -> None:
    layer = cls(64, 32)
    x = torch.randn(8, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


@pytest.mark.parametrize("bits", [(2, 2), (4, 4), (3, None)])
@pytest.mark.parametrize("lam", [1.0, 0.6])
@pytest.mark.parametrize("act_signed", [True, False])
def test_lsq_linear_matches_reference(
    bits: tuple[int, int | None], lam: float, act_signed: bool
) -> None:
    torch.manual_seed(2)
    w_bits, a_bits = bits
    layer = LSQLinear(64, 40, weight_bits=w_bits, act_bits=a_bits, act_signed=act_signed).train()
    x, g = data(64, 40, seed=3)
    if not act_signed:
        x = x.relu()  # unsigned input, with exact zeros on the range's lower end
    with torch.no_grad():
        layer(x)  # initializes the step sizes
    layer.set_quant_lambda(lam)
    ref = copy.deepcopy(layer)
    y, gx, grads = run(layer, layer, x, g)
    keep: dict[str, Tensor] = {}
    y_r, gx_r, grads_r = run(ref, lambda v: lsq_linear_reference(ref, v, lam, keep=keep), x, g)
    assert_close_scaled(y, y_r)
    assert_close_scaled(gx, gx_r)
    assert_close_scaled(grads["weight"], grads_r["weight"])
    assert_close_scaled(grads["bias"], grads_r["bias"])
    # step sizes: the sum of LSQ's per-element terms, at the quantizer outputs' gradients
    wq = ref.weight_quantizer
    terms = lsq_step_contributions(
        ref.weight, wq.step, *wq.q_range, wq.grad_scale(ref.weight), lam * keep["w"].grad
    )
    assert_sum_close(grads["weight_quantizer.step"], terms)
    if a_bits is not None:
        aq = ref.act_quantizer
        assert aq is not None
        terms = lsq_step_contributions(
            x, aq.step, *aq.q_range, aq.grad_scale(x), lam * keep["x"].grad
        )
        assert_sum_close(grads["act_quantizer.step"], terms)
        assert_sum_close(grads_r["act_quantizer.step"], terms)  # the reference agrees too


@pytest.mark.parametrize("act_signed", [True, False])
def test_lsq_frozen_steps_and_leaf_inputs_match_reference(act_signed: bool) -> None:
    """Only the input gradient (steps frozen), only the step gradient (input without grad)."""
    torch.manual_seed(7)
    layer = LSQLinear(64, 40, weight_bits=2, act_bits=3, act_signed=act_signed).train()
    x, g = data(64, 40, seed=8)
    x = x if act_signed else x.relu()
    with torch.no_grad():
        layer(x)
    ref = copy.deepcopy(layer)
    for model in (layer, ref):
        for p in (model.weight_quantizer.step, model.act_quantizer.step):  # type: ignore[union-attr]
            p.requires_grad_(False)
    y, gx, grads = run(layer, layer, x, g)
    y_r, gx_r, grads_r = run(ref, lambda v: lsq_linear_reference(ref, v, 1.0), x, g)
    assert_close_scaled(y, y_r)
    assert_close_scaled(gx, gx_r)
    assert_close_scaled(grads["weight"], grads_r["weight"])
    for model in (layer, ref):
        model.act_quantizer.step.requires_grad_(True)  # type: ignore[union-attr]
        model.zero_grad(set_to_none=True)
    layer(x).backward(g)
    keep: dict[str, Tensor] = {}
    lsq_linear_reference(ref, x, 1.0, keep=keep).backward(g)
    aq = ref.act_quantizer
    assert aq is not None
    terms = lsq_step_contributions(x, aq.step, *aq.q_range, aq.grad_scale(x), keep["x"].grad)
    assert_sum_close(layer.act_quantizer.step.grad, terms)  # type: ignore[union-attr]


def test_lsq_range_ends_pass_no_gradient() -> None:
    """v/s exactly at -Q_N or Q_P is outside the range (gradient 0), as documented."""
    layer = LSQLinear(4, 2, weight_bits=2, act_bits=2, act_signed=False)
    x = torch.tensor([[0.0, 1.0, 3.0, 0.5]])
    with torch.no_grad():
        layer(x)
        layer.act_quantizer.step.fill_(1.0)  # type: ignore[union-attr]
        layer.weight.fill_(1.0)  # quantized to 1: every input reaches the output
        layer.weight_quantizer.step.fill_(1.0)
    x.requires_grad_(True)
    layer(x).sum().backward()
    assert x.grad is not None
    assert x.grad[0, 0] == 0 and x.grad[0, 2] == 0  # v/s = 0 = -Q_N and v/s = 3 = Q_P
    assert x.grad[0, 1] != 0 and x.grad[0, 3] != 0


@pytest.mark.parametrize("init_bits", [4.0, 5.3, 2.0])
@pytest.mark.parametrize("quantize_input", [True, False])
@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_adaptive_matches_reference(init_bits: float, quantize_input: bool, lam: float) -> None:
    torch.manual_seed(3)
    layer = AdaptiveBitLinear(64, 40, init_bits=init_bits, quantize_input=quantize_input).train()
    layer.set_quant_lambda(lam)
    ref = copy.deepcopy(layer)
    x, g = data(64, 40, seed=4)
    torch.manual_seed(11)  # the same stochastic rounding of the bit-width in both runs
    y, gx, grads = run(layer, layer, x, g)
    keep: dict[str, Tensor] = {}
    torch.manual_seed(11)
    y_r, gx_r, grads_r = run(ref, lambda v: adaptive_reference(ref, v, lam, keep=keep), x, g)
    assert_close_scaled(y, y_r)
    assert_close_scaled(gx, gx_r)
    assert_close_scaled(grads["weight"], grads_r["weight"])
    assert_close_scaled(grads["bias"], grads_r["bias"])
    bits = float(keep["bits"])
    terms = absmax_bits_contributions(ref.weight, bits, None, keep["w"].grad)
    if quantize_input:
        terms = torch.cat(
            [
                terms.reshape(-1),
                absmax_bits_contributions(x, bits, -1, keep["x"].grad).reshape(-1),
            ]
        )
    inside = min(max(init_bits, layer.min_bits), layer.max_bits) == init_bits
    assert inside  # the clamp passes the gradient through unchanged here
    assert_sum_close(grads["bit_width"], terms)


def test_absmax_quantizer_values_match_reference() -> None:
    v = torch.randn(50, 30) * 4
    for bits in (2.0, 3.0, 8.0):
        b = torch.tensor(bits)
        assert_close_scaled(
            absmax_fake_quantize(v, b, dim=-1), absmax_fake_quantize_autograd(v, b, dim=-1).detach()
        )
        assert_close_scaled(
            absmax_fake_quantize(v, b), absmax_fake_quantize_autograd(v, b).detach()
        )


# ---------------------------------------------------------------- the benchmarks' "before" layers
BEFORE_CASES = [
    (BitLinear, 64, {"act_bits": 8, "input_norm": True}),
    (HBitLinear, 64, {"act_bits": 8, "input_norm": True}),  # the old dense Hadamard matmul
    (HBitLinear, 512, {"act_bits": 4}),  # a block above 256: the old stack butterfly
    (LSQLinear, 64, {"weight_bits": 2, "act_bits": 2, "act_signed": True}),
    (AdaptiveBitLinear, 64, {"init_bits": 5.3, "quantize_input": True}),
]


@pytest.mark.parametrize(("cls", "width", "options"), BEFORE_CASES)
@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_benchmark_before_layers_compute_the_optimized_function(
    cls: type[nn.Module], width: int, options: dict[str, object], lam: float
) -> None:
    """The "before" rows of bench_quant_layers time the same function as the "after" rows."""
    torch.manual_seed(4)
    layer = cls(width, 24, **options).train()
    norm = getattr(layer, "norm", None)
    if norm is not None:  # a non-uniform gain: the order of transform and norm shows
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2.0)
    x, g = data(width, 24, seed=9)
    if isinstance(layer, LSQLinear):
        with torch.no_grad():
            layer(x)  # initializes the step sizes, which the state dict then carries
    ref = REFERENCE_LAYERS[cls](width, 24, **options).train()
    ref.load_state_dict(layer.state_dict())
    for m in (layer, ref):
        m.set_quant_lambda(lam)  # type: ignore[operator]
    torch.manual_seed(11)  # the same stochastic bit-width rounding in both
    y, gx, grads = run(layer, layer, x, g)
    torch.manual_seed(11)
    y_r, gx_r, grads_r = run(ref, ref, x, g)
    assert_close_scaled(y, y_r)
    assert_close_scaled(gx, gx_r)
    assert grads.keys() == grads_r.keys()
    for name, grad in grads.items():
        if grad.dim() == 0:  # a sum over the tensor (step size, bit-width): summation order
            torch.testing.assert_close(grad, grads_r[name], rtol=1e-5, atol=1e-7)
        else:
            assert_close_scaled(grad, grads_r[name])


# ---------------------------------------------------------------- tests: Hadamard
@pytest.mark.parametrize("n,block", [(8, 8), (96, 32), (256, 256), (1024, 1024), (1024, 128)])
def test_fwht_is_the_butterfly_bit_for_bit_with_a_symmetric_gradient(n: int, block: int) -> None:
    x = torch.randn(3, 5, n, requires_grad=True)
    y = fwht(x, block)
    assert torch.equal(y, fwht_stack(x.detach(), block))
    g = torch.randn_like(y)
    y.backward(g)
    dense = torch.block_diag(*[hadamard_matrix(block, torch.float64)] * (n // block))
    assert x.grad is not None
    assert_close_scaled(x.grad, (g.double() @ dense).float())


@pytest.mark.parametrize(
    "n,block",
    [(8, 8), (64, 64), (96, 32), (256, 256), (512, 512), (1024, 1024), (2048, 256), (32768, 32768)],
)
def test_hadamard_transform_matches_float64_dense(n: int, block: int) -> None:
    rows = 4 if n > 4096 else 64
    x = torch.randn(rows, n, requires_grad=True)
    y = hadamard_transform(x, block)
    g = torch.randn_like(y)
    y.backward(g)

    def exact(v: Tensor) -> Tensor:  # float64; the butterfly where a dense matrix is too big
        v = v.detach().double()
        if block > 4096:
            return fwht(v, block)
        dense = hadamard_matrix(block, torch.float64)
        return (v.reshape(rows, n // block, block) @ dense).reshape(rows, n)

    assert_close_scaled(y, exact(x))
    assert x.grad is not None
    assert_close_scaled(x.grad, exact(g))


def test_hadamard_transform_under_inference_mode_then_training() -> None:
    """The cached factor matrices made under inference_mode stay usable for a training pass."""
    x = torch.randn(4, 512)
    with torch.inference_mode():
        hadamard_transform(x, 512)
    xr = x.clone().requires_grad_(True)
    hadamard_transform(xr, 512).sum().backward()
    assert xr.grad is not None


# ---------------------------------------------------------------- tests: packing, deployment
@pytest.mark.parametrize("scheme", ["2bit", "base3"])
@pytest.mark.parametrize("numel", [0, 1, 7, 4096 * 3 + 3, 300_001])
def test_packing_bytes_are_the_formula_and_round_trip(scheme: str, numel: int) -> None:
    q = torch.randint(
        -1, 2, (numel,), dtype=torch.int8, generator=torch.Generator().manual_seed(numel)
    )
    packed = pack_ternary(q, scheme)
    assert torch.equal(packed, pack_reference(q, scheme))
    assert torch.equal(unpack_ternary(packed, q.shape, scheme), q)
    assert torch.equal(pack_ternary(q.to(torch.int64), scheme), packed)
    # an unaligned view (e.g. a slice of a larger buffer) decodes the same
    shifted = torch.cat([torch.zeros(1, dtype=torch.uint8), packed])[1:]
    assert torch.equal(unpack_ternary(shifted, q.shape, scheme), q)


def test_two_bit_value_three_is_refused_anywhere() -> None:
    q = torch.randint(-1, 2, (4 * 37,), dtype=torch.int8)
    packed = pack_ternary(q, "2bit")
    for index in (0, 13, packed.numel() - 1):
        bad = packed.clone()
        bad[index] = 0b00110000  # third field is 3
        with pytest.raises(ValueError, match="value 3"):
            unpack_ternary(bad, q.shape, "2bit")


def _bit_layer(cls: type[BitLinear], width: int = 64, out: int = 24) -> BitLinear:
    torch.manual_seed(5)
    return cls(width, out, input_norm=True).eval()


@pytest.mark.parametrize("cls", [BitLinear, HBitLinear])
@pytest.mark.parametrize("packing", [None, "base3", "2bit"])
@pytest.mark.parametrize("cache", ["none", "codes", "weight"])
def test_deployed_storage_and_cache_give_the_float_path_bit_for_bit(
    cls: type[BitLinear], packing: str | None, cache: str
) -> None:
    layer = _bit_layer(cls)
    x = torch.randn(3, 7, 64)
    deployed = layer.to_deployed()
    expected = layer(x)
    assert torch.equal(deployed(x), expected)
    target: TernaryLinear = (
        deployed if packing is None else PackedTernaryLinear.from_ternary(deployed, packing)
    )
    target.configure(cache=cache)  # type: ignore[arg-type]
    for _ in range(2):  # the second call may come from the cache
        assert torch.equal(target(x), expected)


@pytest.mark.parametrize("cls", [BitLinear, HBitLinear])
@pytest.mark.parametrize("packing", [None, "base3"])
def test_int8_matmul_matches_the_float_path(cls: type[BitLinear], packing: str | None) -> None:
    layer = _bit_layer(cls, 128, 40)
    x = torch.randn(2, 9, 128)
    deployed = layer.to_deployed()
    if packing is not None:
        deployed = PackedTernaryLinear.from_ternary(deployed, packing)
    expected = deployed(x)
    deployed.configure(matmul="int8")
    assert_close_scaled(deployed(x), expected, tol=2e-6)


def test_int8_matmul_needs_eight_bit_activations() -> None:
    deployed = BitLinear(16, 8, act_bits=None).to_deployed()
    with pytest.raises(ValueError, match="at most 8 bits"):
        deployed.configure(matmul="int8")


def test_cache_never_goes_stale() -> None:
    layer = _bit_layer(BitLinear)
    deployed = layer.to_deployed()
    deployed.configure(cache="weight")
    x = torch.randn(5, 64)
    deployed(x)
    with torch.no_grad():
        deployed.codes.neg_()  # an in-place edit bumps the buffer's version
    fresh = TernaryLinear(
        deployed.codes.clone(),
        deployed.scale,
        deployed.bias.detach(),
        act_bits=8,
        norm=deployed.norm,
    )
    assert torch.equal(deployed(x), fresh(x))
    deployed.load_state_dict(layer.to_deployed().state_dict())
    assert torch.equal(deployed(x), layer(x))


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def test_packed_layers_keep_state_dict_and_checkpoint_format(tmp_path: Path) -> None:
    torch.manual_seed(6)
    model = convert(prepare(_Tiny(), "ternary"))
    x = torch.randn(4, 32)
    expected = model(x)
    int8_state = model.state_dict()
    packed_model = configure_ternary(copy.deepcopy(model), packing="base3")
    assert sum(isinstance(m, PackedTernaryLinear) for m in packed_model.modules()) == 2
    assert torch.equal(packed_model(x), expected)
    state = packed_model.state_dict()
    assert state.keys() == int8_state.keys()
    assert all(torch.equal(state[k], int8_state[k]) for k in state)
    save_packed_checkpoint(packed_model, tmp_path / "ckpt")
    target = configure_ternary(convert(prepare(_Tiny(), "ternary")), packing="base3")
    load_packed_into(target, tmp_path / "ckpt")
    assert torch.equal(target(x), expected)
    layer = packed_model.body[0]
    assert layer.weight_bytes() == math.ceil(64 * 32 / 5) + 4  # 1.6 bits per weight + scale
    back = configure_ternary(packed_model, packing="int8")
    assert not any(isinstance(m, PackedTernaryLinear) for m in back.modules())
    assert torch.equal(back(x), expected)
