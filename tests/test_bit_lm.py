"""BitLM (seed 004): causal/non-causal attention, chunking, ACT, quantization, int8, generation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic
from torch.utils._python_dispatch import TorchDispatchMode

from trainables.models import BitLM, BitLMConfig
from trainables.quant import QuantLayer, available_schemes, initialize_step_sizes, prepare

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 4, "seq_len": 72}


def _model(seed: int = 0, **kw: object) -> BitLM:
    torch.manual_seed(seed)
    return BitLM(BitLMConfig(**{**TINY, **kw})).eval()


def test_output_contract_and_loss_in_nats_per_bit() -> None:
    model = _model()
    bits = torch.randint(0, 2, (3, 45))
    out = model(bits, bits)
    assert out.logits.shape == (3, 45, 2)
    assert out.task_loss is not None
    assert (
        abs(float(out.task_loss.detach()) - math.log(2)) < 0.05
    )  # an untrained model: ~1 bit per bit
    assert model.hidden_states(bits).shape == (3, 45, 32)
    with pytest.raises(ValueError, match="seq_len=72"):
        model(torch.zeros(1, 81, dtype=torch.long))


@pytest.mark.parametrize("causal", [True, False])
def test_causal_model_never_sees_the_future_and_the_denoiser_does(causal: bool) -> None:
    model = _model(causal=causal)
    bits = torch.randint(0, 2, (2, 36))
    changed = bits.clone()
    changed[:, 20] ^= 1
    a, b = model(bits).logits, model(changed).logits
    assert torch.equal(a[:, :20], b[:, :20]) == causal
    assert not torch.allclose(a[:, 20:], b[:, 20:])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 16, 71])
def test_chunked_attention_equals_full_attention(causal: bool, chunk: int) -> None:
    full = _model(causal=causal).double()
    chunked = copy.deepcopy(full)
    for block in chunked.blocks:
        block.attn.chunk = chunk
    bits = torch.randint(0, 2, (2, 72))
    torch.testing.assert_close(chunked(bits).logits, full(bits).logits, rtol=1e-10, atol=1e-10)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operator returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("causal", [True, False])
def test_chunked_attention_never_allocates_the_t_by_t_map(causal: bool) -> None:
    t, heads = 576, 1
    cfg = {"d_model": 8, "n_heads": heads, "seq_len": t, "causal": causal}
    bits = torch.randint(0, 2, (1, t))
    sizes = {}
    for name, extra in {
        "chunked": {"attn_chunk": 32},
        "logged": {"attn_chunk": 32, "full_attn_logging": True},
    }.items():
        model = _model(**cfg, **extra)
        with torch.no_grad(), _LargestTensor() as probe:
            model(bits)
        sizes[name] = probe.largest
        assert len(model.attention_maps) == (2 if name == "logged" else 0)
    assert sizes["chunked"] <= 32 * t  # one chunk's scores [1, H, 32, T] at most
    assert sizes["logged"] >= t * t  # the probe sees the full map when telemetry asks for it


def _act_training(lambda_act: float, steps: int = 60) -> float:
    torch.manual_seed(0)
    model = BitLM(BitLMConfig(**{**TINY, "n_layers": 4, "act": True}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    pattern = torch.tensor([0, 1, 1, 0, 1, 0, 0, 0, 1])
    for _ in range(steps):
        start = torch.randint(0, 9, (8,), generator=g)
        idx = (start[:, None] + torch.arange(37)) % 9  # [8, 37] a periodic bit stream
        seq = pattern[idx]
        out = model(seq[:, :-1], seq[:, 1:])
        loss = out.task_loss + lambda_act * out.aux_losses["ponder"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return model(seq[:, :-1]).metrics["act/mean_layers"]


def test_act_ponder_cost_makes_positions_halt_early() -> None:
    fresh = _model(n_layers=4, act=True)
    out = fresh(torch.randint(0, 2, (2, 36)))
    assert out.metrics["act/mean_layers"] == 4.0  # sigmoid(-2) * 3 < 0.99: nobody halts early
    assert "ponder" in out.aux_losses
    strong = _act_training(lambda_act=0.5)
    none = _act_training(lambda_act=0.0)
    assert strong < 3.0  # positions halt before the last layer
    assert none > strong + 0.5


def test_act_weights_sum_to_one_and_halting_layer_is_recorded() -> None:
    model = _model(n_layers=3, act=True)
    with torch.no_grad():
        model.halt.bias.fill_(0.0)  # p ~ 0.5 per layer: halts at layer 2 (0.5 + 0.5 >= 0.99)
        model.halt.weight.zero_()
    out = model(torch.randint(0, 2, (2, 18)))
    assert model.last_halting_layers is not None
    assert (model.last_halting_layers == 2).all()
    assert out.metrics["act/mean_layers"] == 2.0
    torch.testing.assert_close(out.aux_losses["ponder"], torch.tensor(2.5))  # N + R = 2 + 0.5


def _swapped(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is nn.Linear]


@pytest.mark.parametrize("scheme", available_schemes())
@pytest.mark.parametrize("variant", [{}, {"reversible": True}, {"act": True}])
def test_every_quant_scheme_swaps_every_projection(scheme: str, variant: dict) -> None:
    model = _model(**variant).train()
    bits = torch.randint(0, 2, (2, 36))
    reference = model(bits).logits.detach()
    prepare(model, scheme)
    if scheme != "none":
        assert _swapped(model) == ["head"]  # only the full-precision head is left
        assert sum(isinstance(m, QuantLayer) for m in model.modules()) == 6 * 2
    initialize_step_sizes(model, lambda: model(bits))
    out = model(bits, bits)
    out.task_loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if scheme != "none":
        assert not torch.allclose(out.logits.detach(), reference)


def test_dynamic_int8_inference_is_close_to_the_float_model() -> None:
    torch.manual_seed(0)
    model = BitLM(BitLMConfig(**TINY))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pattern = torch.tensor([0, 1, 1, 0, 1, 0, 0, 0, 1] * 9)
    for _ in range(20):
        out = model(pattern[None, :72].repeat(4, 1), pattern[None, 1:73].repeat(4, 1))
        opt.zero_grad()
        out.task_loss.backward()
        opt.step()
    model.eval()
    int8 = quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    assert not _swapped(int8)  # every Linear is now a dynamically quantized one
    bits = torch.randint(0, 2, (10, 72), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model(bits).logits, int8(bits).logits
    assert not torch.equal(a, b)
    assert float((a - b).abs().max()) < 0.1 * float(a.abs().max())
    assert float((a.softmax(-1) - b.softmax(-1)).abs().max()) < 0.05


def test_generate_appends_whole_bytes_of_bits() -> None:
    model = _model()
    prefix = torch.randint(0, 2, (2, 18))
    g = torch.Generator().manual_seed(0)
    out = model.generate(prefix, 9, generator=g)  # beyond seq_len: the window slides by bytes
    assert out.shape == (2, 18 + 81)
    assert torch.equal(out[:, :18], prefix)
    assert set(out.unique().tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="causal"):
        _model(causal=False).generate(prefix, 1)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"seq_len": 70}, "multiple of 9"),
        ({"act": True, "reversible": True}, "choose one"),
        ({"act_eps": 1.0}, "act_eps"),
        ({"n_heads": 5}, "n_heads"),
        ({"attn_chunk": 0}, "attn_chunk"),
    ],
)
def test_config_rejects_bad_values(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BitLMConfig(**{**TINY, **kw})
    with pytest.raises(ValueError, match="unknown BitLMConfig key"):
        BitLMConfig.from_dict({"d_model": 8, "depth": 2})
    cfg = BitLMConfig(**TINY)
    assert BitLMConfig.from_dict(cfg.to_dict()) == cfg


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    bits = torch.randint(0, 2, (2, 36))
    grads = []
    for flag in (False, True):
        model = _model(grad_checkpointing=flag, act=True).train()
        model(bits, bits).task_loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_chunked_attention_gradients_equal_full_attention() -> None:
    full = _model(causal=True).double().train()
    chunked = copy.deepcopy(full)
    for block in chunked.blocks:
        block.attn.chunk = 10
    bits = torch.randint(0, 2, (2, 72))
    for model in (full, chunked):
        model(bits, bits).task_loss.backward()
    for a, b in zip(full.parameters(), chunked.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-12)
