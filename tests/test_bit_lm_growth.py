"""Growth of the bit LM (seed 004): depth, width and context are function-preserving."""

from __future__ import annotations

import pytest
import torch

from trainables.models import BitLM, BitLMConfig, grow_context, grow_depth, grow_width
from trainables.quant import initialize_step_sizes, prepare

VARIANTS = {
    "plain": {},
    "reversible": {"reversible": True},
    "act": {"act": True},
    "phase_chunked": {"byte_phase": True, "attn_chunk": 16},
}


def _model(variant: str, scheme: str | None = None) -> tuple[BitLM, torch.Tensor]:
    torch.manual_seed(0)
    cfg = BitLMConfig(d_model=16, n_layers=2, n_heads=2, seq_len=45, **VARIANTS[variant])
    model = BitLM(cfg)
    bits = torch.randint(0, 2, (3, 45), generator=torch.Generator().manual_seed(1))
    if variant == "act":
        with torch.no_grad():  # halting probabilities that make positions halt at varied layers
            model.halt.weight.normal_(0.0, 5.0)
            model.halt.bias.fill_(0.3)
    if scheme is not None:
        prepare(model, scheme)
        initialize_step_sizes(model, lambda: model(bits))
    return model.eval(), bits


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("scheme", [None, "ternary"])
def test_depth_growth_keeps_the_function(variant: str, scheme: str | None) -> None:
    model, bits = _model(variant, scheme)
    out = model(bits)
    before = out.logits
    if variant == "act":  # some positions halt at layer 1, others run to the last one
        assert 1.0 < out.metrics["act/mean_layers"] < 2.0
    grown = grow_depth(model, 2, generator=torch.Generator().manual_seed(0))
    assert grown.config.n_layers == 4 and len(grown.blocks) == 4
    torch.testing.assert_close(grown(bits).logits, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_width_growth_keeps_the_function(variant: str) -> None:
    model, bits = _model(variant)
    before = model(bits).logits
    grown = grow_width(model, 2)
    assert (grown.config.d_model, grown.config.n_heads) == (32, 4)
    assert grown.config.pos_dim == 16
    torch.testing.assert_close(grown(bits).logits, before, rtol=1e-4, atol=1e-5)
    noisy = grow_width(model, 2, noise_std=1e-2, generator=torch.Generator().manual_seed(0))
    assert _rel(noisy(bits).logits, before) < 1e-4  # the noise cancels across the copies


@pytest.mark.parametrize("scheme", ["ternary", "lsq"])
def test_width_growth_of_a_quantized_model(scheme: str) -> None:
    model, bits = _model("plain", scheme)
    before = model(bits).logits
    grown = grow_width(model, 2)
    assert _rel(grown(bits).logits, before) < 1e-2  # the tolerance of tests/test_growth.py


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_context_growth_keeps_the_function_and_accepts_longer_inputs(variant: str) -> None:
    model, bits = _model(variant)
    before = model(bits).logits
    grown = grow_context(model, 2)
    assert grown.config.seq_len == 90
    torch.testing.assert_close(grown(bits).logits, before)
    assert grown(torch.randint(0, 2, (1, 90))).logits.shape == (1, 90, 2)
    with pytest.raises(ValueError, match="multiple of 9"):
        grow_context(model, seq_len=50)


def test_a_grown_model_trains() -> None:
    model, bits = _model("reversible")
    grown = grow_width(grow_depth(model, 1), 2, noise_std=1e-2).train()
    grown(bits, bits).task_loss.backward()
    assert all(p.grad is not None for p in grown.parameters())
