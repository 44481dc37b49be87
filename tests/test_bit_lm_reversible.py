"""Reversible blocks of the bit LM: gradients equal the stored computation, memory is freed."""

from __future__ import annotations

import pytest
import torch

from trainables.config import RunConfig
from trainables.loop import train
from trainables.models import BitLM, BitLMConfig
from trainables.models.bit_lm_blocks import BitBlock, reversible_stack
from trainables.quant import prepare
from trainables.reporting import ListReporter


def _grads(
    blocks: list[BitBlock],
    x1: torch.Tensor,
    x2: torch.Tensor,
    reversible: bool,
    seed: int,
    autocast: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    for block in blocks:
        block.zero_grad(set_to_none=True)
    a = x1.clone().requires_grad_(True)
    b = x2.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same dropout draws in both computations
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # forward only
        if reversible:
            y1, y2 = reversible_stack(blocks, a, b)
        else:
            y1, y2 = a, b
            for block in blocks:
                y1, y2 = block.couple(y1, y2)
    w = torch.linspace(-1, 1, y1.numel()).view_as(y1)
    loss = (y1 * w).sum() + (y2 * w.flip(-1)).square().sum()
    loss.backward()
    params = [p.grad for block in blocks for p in block.parameters()]
    return torch.cat([loss.detach().view(1), a.grad.flatten(), b.grad.flatten()]), params


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("scheme", [None, "ternary", "lsq"])
def test_reversible_gradients_equal_the_stored_coupling(dropout: float, scheme: str | None) -> None:
    torch.manual_seed(0)
    cfg = BitLMConfig(d_model=32, n_layers=3, n_heads=4, seq_len=27, dropout=dropout)
    model = BitLM(cfg).double()
    if scheme is not None:
        prepare(model, scheme)
    model.train()
    blocks = list(model.blocks)
    x1 = torch.randn(2, 27, 32, dtype=torch.float64)
    x2 = torch.randn(2, 27, 32, dtype=torch.float64)
    with torch.no_grad():  # LSQ step sizes initialize on the first forward
        for block in blocks:
            block.couple(x1, x2)
    ref, ref_params = _grads(blocks, x1, x2, reversible=False, seed=1)
    got, got_params = _grads(blocks, x1, x2, reversible=True, seed=1)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    assert len(got_params) == len(ref_params)
    for g, r in zip(got_params, ref_params, strict=True):
        assert (g is None) == (r is None)
        if r is not None:
            torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)


def test_reversible_model_trains_and_matches_its_eval_forward() -> None:
    torch.manual_seed(0)
    model = BitLM(BitLMConfig(d_model=32, n_layers=4, n_heads=4, seq_len=36, reversible=True))
    bits = torch.randint(0, 2, (4, 36))
    out = model(bits, bits)
    with torch.no_grad():
        again = model(bits, bits)
    torch.testing.assert_close(out.logits, again.logits)
    out.task_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_reversible_forward_keeps_no_activation_per_block() -> None:
    """The autograd graph of the reversible stack saves only the last pair, whatever the depth."""

    def saved_bytes(n_layers: int, reversible: bool) -> int:
        torch.manual_seed(0)
        cfg = BitLMConfig(d_model=32, n_layers=n_layers, n_heads=4, seq_len=72)
        cfg = cfg.replace(reversible=reversible)
        model = BitLM(cfg)
        total = 0
        seen: set[int] = set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            if t.data_ptr() not in seen and not isinstance(t, torch.nn.Parameter):
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randint(0, 2, (4, 72)), torch.randint(0, 2, (4, 72)))
        return total

    plain = [saved_bytes(n, False) for n in (2, 8)]
    rev = [saved_bytes(n, True) for n in (2, 8)]
    assert plain[1] > 3 * plain[0]  # stored activations grow with depth
    assert rev[1] < 1.2 * rev[0]  # flat with depth


def test_reversible_gradients_under_bf16_autocast_match_the_stored_coupling() -> None:
    """Backward recomputes under the forward's autocast state (bf16, as train.precision)."""
    torch.manual_seed(0)
    model = BitLM(BitLMConfig(d_model=32, n_layers=3, n_heads=4, seq_len=27)).train()
    blocks = list(model.blocks)
    x1, x2 = torch.randn(2, 27, 32), torch.randn(2, 27, 32)
    ref, ref_params = _grads(blocks, x1, x2, reversible=False, seed=1, autocast=True)
    got, got_params = _grads(blocks, x1, x2, reversible=True, seed=1, autocast=True)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)  # backward ran outside autocast
    for g, r in zip(got_params, ref_params, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_the_loop_reports_less_saved_activation_memory_growing_less_with_depth() -> None:
    """Seed 004's "reversible memory against depth": perf/saved_activation_mib of one training
    step through the loop, standard and reversible blocks at 2 and 4 layers."""

    def saved_mib(n_layers: int, reversible: bool) -> float:
        cfg = RunConfig.from_dict({
            "model": {"arch": "bit_lm", "d_model": 16, "n_heads": 2, "seq_len": 36,
                      "n_layers": n_layers, "reversible": reversible},
            "data": {"eval_batches": 1, "max_bytes": 20_000},
            "train": {"steps": 1, "eval_every": 1, "batch_size": 2, "threads": 1},
            "telemetry": {"gen_bytes": 2, "gen_samples": 1, "retries": 0},
        })  # fmt: skip
        reporter = ListReporter()
        train(cfg, reporter=reporter)
        return reporter.metrics[0]["perf/saved_activation_mib"]

    standard = {n: saved_mib(n, reversible=False) for n in (2, 4)}
    reversible = {n: saved_mib(n, reversible=True) for n in (2, 4)}
    assert reversible[4] < standard[4]
    assert reversible[4] - reversible[2] < standard[4] - standard[2]
    assert standard[4] > standard[2] > 0  # the standard stack keeps every block's activations
