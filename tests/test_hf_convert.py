"""Converting a tiny, random, locally built Hugging Face Llama-style model to a bitsweep scheme."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from trainables.models import (
    HFCausalLMAdapter,
    ModelOutput,
    convert_hf_model,
    insert_post_attn_norms,
    load_hf_model,
)
from trainables.quant import QuantLayer, set_quant_lambda

transformers = pytest.importorskip("transformers")


def _tiny_llama() -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _at_lambda(model: nn.Module, lam: float) -> nn.Module:
    set_quant_lambda(model, lam, eval_lambda=None)  # evaluate at lam, not at the default 1
    return model


@pytest.mark.parametrize("scheme", ["ternary", "hadamard"])
def test_converted_model_at_lambda_zero_equals_the_original(scheme: str) -> None:
    original = _tiny_llama()
    ids = torch.randint(0, 128, (2, 12))
    reference = _logits(original, ids)
    converted = convert_hf_model(copy.deepcopy(original), scheme)
    quantized = [n for n, m in converted.named_modules() if isinstance(m, QuantLayer)]
    assert len(quantized) == 2 * 7  # q k v o gate up down per layer
    assert type(converted.lm_head) is nn.Linear  # the head stays full precision
    torch.testing.assert_close(
        _logits(_at_lambda(converted, 0.0), ids), reference, atol=1e-5, rtol=0
    )
    drift = (_logits(_at_lambda(converted, 1.0), ids) - reference).abs().max()
    assert drift > 1e-3  # lam = 1 really quantizes


def test_convert_from_a_local_directory(tmp_path: Path) -> None:
    original = _tiny_llama()
    original.save_pretrained(tmp_path / "tiny")
    ids = torch.randint(0, 128, (1, 10))
    converted = convert_hf_model(tmp_path / "tiny", "ternary", act_bits=None)
    assert all(m.act_bits is None for m in converted.modules() if isinstance(m, QuantLayer))
    torch.testing.assert_close(
        _logits(_at_lambda(converted.eval(), 0.0), ids), _logits(original, ids), atol=1e-5, rtol=0
    )


def test_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        convert_hf_model(missing, "ternary")


def test_missing_transformers_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install bitsweep\[hf\]"):
        load_hf_model(tmp_path)


def test_rmsnorm_post_attn_structure_and_calibration() -> None:
    original = _tiny_llama()
    ids = torch.randint(0, 128, (2, 12))
    reference = _logits(original, ids)
    # the attention outputs' mean RMS on the calibration tokens, measured with hooks
    rms: list[float] = []
    hooks = [
        layer.self_attn.register_forward_hook(
            lambda m, a, o: rms.append(float(o[0].square().mean(-1).sqrt().mean()))
        )
        for layer in original.model.layers
    ]
    _logits(original, ids)
    for h in hooks:
        h.remove()
    converted = convert_hf_model(
        copy.deepcopy(original), "ternary", rmsnorm_post_attn=True, calibration_ids=ids
    )
    norms = [layer.post_attn_norm for layer in converted.model.layers]
    assert all(isinstance(n, nn.RMSNorm) for n in norms)
    for norm, expected in zip(norms, rms, strict=True):
        torch.testing.assert_close(norm.weight, torch.full((64,), expected), rtol=1e-5, atol=0)
    assert "model.layers.0.post_attn_norm.weight" in converted.state_dict()
    out = _logits(_at_lambda(converted, 0.0), ids)
    assert torch.isfinite(out).all()
    # an RMSNorm is not the identity: the function changes, but it stays a usable model
    change = float((out - reference).norm() / reference.norm())
    assert 0.0 < change < 1.0
    # the norm really runs inside the attention block's output path
    with torch.no_grad():
        converted.model.layers[0].post_attn_norm.weight.mul_(3.0)
    assert (_logits(converted, ids) - out).abs().max() > 1e-4
    # and survives a deepcopy bound to the copy's own norm
    twin = copy.deepcopy(converted)
    with torch.no_grad():
        twin.model.layers[0].post_attn_norm.weight.zero_()
    assert (_logits(twin, ids) - _logits(converted, ids)).abs().max() > 1e-4


def test_insert_post_attn_norms_rejects_models_without_attention() -> None:
    with pytest.raises(ValueError, match="attention modules"):
        insert_post_attn_norms(nn.Sequential(nn.Linear(4, 4)))


def test_adapter_returns_model_output() -> None:
    model = HFCausalLMAdapter(_tiny_llama())
    ids = torch.randint(0, 128, (2, 8))
    out = model(ids, ids.roll(-1, 1))
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 8, 128)
    assert (
        out.task_loss is not None and 4.0 < float(out.task_loss.detach()) < 6.0
    )  # ~ln(128) = 4.85


def test_build_hf_lm_rebuilds_the_same_converted_model(tmp_path: Path) -> None:
    """A checkpoint stores HFLMConfig; rebuilding from it gives the same model (norms included)."""
    from trainables.models.hf_lm import HFLMConfig, build_hf_lm

    _tiny_llama().save_pretrained(tmp_path / "tiny")
    config = HFLMConfig(str(tmp_path / "tiny"), seq_len=16, rmsnorm_post_attn=True)
    first = build_hf_lm(config, "ternary", act_bits=8)
    second = build_hf_lm(first.config.to_dict(), "ternary", act_bits=8)
    assert first.config == second.config and first.config.vocab_size == 128
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert "model.model.layers.1.post_attn_norm.weight" in first.state_dict()
    ids = torch.randint(0, 128, (1, 8))
    out = first.eval()(ids, ids.roll(-1, 1))
    assert out.logits.shape == (1, 8, 128) and torch.isfinite(out.task_loss)
