"""The byte-level language model: config checks, structure, causality, quantization, learning."""

from __future__ import annotations

import math
import pydoc_data.topics
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from trainables.models import ByteLM, ByteLMConfig, FloatLinear, ModelOutput, bits_per_byte
from trainables.quant import QuantLayer, prepare, set_quant_lambda

SMALL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "seq_len": 16}


def _model(**overrides: object) -> ByteLM:
    return ByteLM(ByteLMConfig(**{**SMALL, **overrides}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"ffn": "gelu"}, "ByteLMConfig.ffn must be one of 'sqrelu', 'gated_sqrelu', 'swiglu'"),
        ({"n_heads": 3}, "ByteLMConfig.n_heads must be a divisor of d_model=32"),
        ({"n_heads": 32}, "d_model / n_heads is even"),
        ({"d_model": 0}, "ByteLMConfig.d_model must be a positive integer"),
        ({"target_exit_layer": 5.0}, "ByteLMConfig.target_exit_layer must be None or in [1, "),
        ({"dropout": 1.0}, "ByteLMConfig.dropout must be in [0, 1)"),
        ({"exit_curriculum": "random"}, "'none', 'rotational', 'gradual'"),
        ({"layer_dropout_schedule": "linear"}, "'quadratic', 'exponential', 'uniform'"),
        ({"exit_threshold": 1.5}, "ByteLMConfig.exit_threshold must be in (0, 1)"),
        ({"d_ff": 0}, "ByteLMConfig.d_ff must be a positive integer or None"),
    ],
)
def test_config_errors_name_the_field_and_allowed_values(
    overrides: dict[str, object], needle: str
) -> None:
    with pytest.raises(ValueError) as err:
        ByteLMConfig(**{**SMALL, **overrides})  # type: ignore[arg-type]
    assert needle in str(err.value)


def test_config_is_keyword_only_and_round_trips() -> None:
    with pytest.raises(TypeError):
        ByteLMConfig(64)  # type: ignore[misc]
    cfg = ByteLMConfig(**SMALL, ffn="swiglu", early_exit=True)
    assert ByteLMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ByteLMConfig key"):
        ByteLMConfig.from_dict({**cfg.to_dict(), "widht": 3})
    assert cfg.ffn_hidden == 88  # 8/3 * 32 rounded up to a multiple of 8
    assert ByteLMConfig(**SMALL).ffn_hidden == 128
    assert cfg.exit_target == 1.0  # n_layers / 2


def test_bits_per_byte_is_nats_over_ln2() -> None:
    assert bits_per_byte(math.log(256)) == pytest.approx(8.0)
    assert bits_per_byte(torch.tensor(math.log(2))).item() == pytest.approx(1.0)


def test_forward_returns_model_output_with_uniform_initial_loss() -> None:
    model = _model()
    idx = torch.randint(0, 256, (3, 16))
    out = model(idx, idx.roll(-1, 1))
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (3, 16, 256)
    assert out.task_loss is not None
    # small initialization: close to the uniform 8 bits per byte
    assert abs(bits_per_byte(out.task_loss.item()) - 8.0) < 0.1
    assert out.aux_losses == {}
    assert model(idx).task_loss is None


def test_too_long_sequence_names_seq_len() -> None:
    with pytest.raises(ValueError, match=r"exceeds ByteLMConfig.seq_len=16"):
        _model()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("ffn", ["sqrelu", "gated_sqrelu", "swiglu"])
@pytest.mark.parametrize("norms", [(False, False), (True, True)])
def test_attention_is_causal(ffn: str, norms: tuple[bool, bool]) -> None:
    model = _model(ffn=ffn, subln=norms[0], rmsnorm_post_attn=norms[1]).eval()
    idx = torch.randint(0, 256, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 256
    a, b = model(idx).logits, model(changed).logits
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-4


def test_structure_plain_linears_norms_and_head_last() -> None:
    model = _model(subln=True, rmsnorm_post_attn=True, ffn="gated_sqrelu", early_exit=True)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert all(type(m) is nn.Linear for _, m in linears)
    assert all(m.bias is None for _, m in linears)
    assert linears[-1][0] == "head"
    assert len(linears) == 2 * 7 + 1  # q k v o gate up down per block, plus the head
    block = model.blocks[0]
    assert isinstance(block.attn.sub_norm, nn.RMSNorm)
    assert isinstance(block.attn.post_norm, nn.RMSNorm)
    assert isinstance(block.ffn.sub_norm, nn.RMSNorm)
    assert block.ffn.sub_norm.normalized_shape == (88,)
    plain = _model()
    assert plain.blocks[0].attn.sub_norm is None and plain.blocks[0].ffn.gate_proj is None


@pytest.mark.parametrize("scheme", ["ternary", "hadamard"])
def test_prepare_quantizes_every_block_linear_but_keeps_head_and_gates(scheme: str) -> None:
    model = _model(early_exit=True, ffn="swiglu", subln=True)
    reference = _model(early_exit=True, ffn="swiglu", subln=True)
    reference.load_state_dict(model.state_dict())
    prepare(model, scheme)
    quantized = [n for n, m in model.named_modules() if isinstance(m, QuantLayer)]
    assert len(quantized) == 2 * 7
    assert type(model.head) is nn.Linear
    assert all(isinstance(g.fc1, FloatLinear) for g in model.exit_gates)
    # lam = 0 is exactly full precision
    set_quant_lambda(model, 0.0, eval_lambda=None)
    model.eval(), reference.eval()
    model.exit_at_inference = reference.exit_at_inference = False
    idx = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(model(idx).logits, reference(idx).logits, atol=1e-5, rtol=0)
    # and lam = 1 is not
    set_quant_lambda(model, 1.0, eval_lambda=None)
    assert (model(idx).logits - reference(idx).logits).abs().max() > 1e-3


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    idx = torch.randint(0, 256, (2, 16))
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(1)
        model = _model(grad_checkpointing=ckpt, dropout=0.1)
        torch.manual_seed(2)
        model(idx, idx).task_loss.backward()
        grads.append(model.blocks[0].attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


def test_generate_appends_bytes() -> None:
    model = _model().eval()
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), 20, temperature=0.0)
    assert out.shape == (2, 23)
    assert int(out.min()) >= 0 and int(out.max()) < 256


def _pydocs() -> torch.Tensor:
    text = "".join(pydoc_data.topics.topics.values()).encode("utf-8")
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long()


def _windows(data: torch.Tensor, n: int, t: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    start = torch.randint(0, len(data) - t - 1, (n,), generator=gen)
    win = data[start[:, None] + torch.arange(t + 1)]  # [n, t+1]
    return win[:, :-1], win[:, 1:]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A short training loop: one thread is faster and steadier than two on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_ternary_byte_lm_learns_pydocs() -> None:
    """Functional: the ternary LM lowers validation bits/byte from ~8 to well below 5 in seconds."""
    data = _pydocs()
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    model = prepare(ByteLM(ByteLMConfig(d_model=32, n_layers=2, n_heads=2, seq_len=32)), "ternary")
    vx, vy = _windows(val, 32, 32, torch.Generator().manual_seed(1))

    def val_bpb() -> float:
        model.eval()
        with torch.no_grad():
            loss = model(vx, vy).task_loss
        model.train()
        return float(bits_per_byte(loss))

    start = val_bpb()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(2)
    for _ in range(60):
        x, y = _windows(train, 16, 32, gen)
        loss = model(x, y).task_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = val_bpb()
    assert start == pytest.approx(8.0, abs=0.1)
    assert end < 5.0, f"validation bits/byte {start:.2f} -> {end:.2f}"
