"""GGUF export (trainables/export/gguf_export.py), checked with gguf's own reader and dequantizers.

The file is read back with ``gguf.GGUFReader`` and every ternary tensor decoded with
``gguf.quants.dequantize``: the values must be exactly our codes times ``fp16(gamma)`` (TQ formats
keep one float16 scale per 256 weights; for a BitNet tensor every block's scale is its single
gamma), i.e. our ``codes * gamma`` within a relative 2^-11, and the bits per weight measured on
the file must be TQ2_0's 2.0625 and TQ1_0's 1.6875.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from trainables.export import ExportError, export_model, read_source  # noqa: E402
from trainables.models.lm import ByteLM  # noqa: E402
from trainables.models.lm_config import ByteLMConfig  # noqa: E402
from trainables.quant import load_packed_checkpoint, prepare, save_packed_checkpoint  # noqa: E402

QTYPES = {"gguf-tq2": ("TQ2_0", 2.0625), "gguf-tq1": ("TQ1_0", 1.6875)}


def _field(reader: object, key: str) -> object:
    field = reader.get_field(key)  # type: ignore[attr-defined]
    assert field is not None, key
    return field.contents()


def _byte_lm_checkpoint(root: Path) -> Path:
    """A ternary byte LM whose FFN down-projection (in = 384) is not a multiple of 256 and whose
    q_proj has an all-zero block, saved as a packed checkpoint."""
    cfg = ByteLMConfig(d_model=256, n_layers=1, n_heads=4, d_ff=384, seq_len=16)
    torch.manual_seed(0)
    model = prepare(ByteLM(cfg), "ternary")
    with torch.no_grad():
        model.blocks[0].attn.q_proj.weight[:2] = 0.0  # two 256-blocks that decode to zeros
    manifest = {
        "architecture": {"arch": "byte_lm", "config": dataclasses.asdict(cfg)},
        "model_type": "bitsweep-byte_lm-ternary",
        "final_lambda": 1.0,
    }
    return save_packed_checkpoint(model, root / "ckpt", manifest=manifest)


@pytest.mark.parametrize("fmt", sorted(QTYPES))
def test_byte_lm_gguf_decodes_to_our_ternary_weights(tmp_path: Path, fmt: str) -> None:
    ckpt = _byte_lm_checkpoint(tmp_path)
    manifest = export_model(ckpt, fmt, tmp_path / "out")
    reader = gguf.GGUFReader(str(tmp_path / "out" / "model.gguf"))
    qname, bpw = QTYPES[fmt]
    assert _field(reader, "general.architecture") == "bitsweep-byte-lm"
    assert _field(reader, "bitsweep-byte-lm.d_model") == 256
    packed = load_packed_checkpoint(ckpt)
    layers = packed.manifest["ternary_layers"]
    tensors = {t.name: t for t in reader.tensors}
    seen_types = set()
    for name in layers:
        codes = packed.state_dict[f"{name}.codes"].numpy().astype(np.float32)
        gamma = float(packed.state_dict[f"{name}.scale"])
        t = tensors[f"{name}.weight"]
        seen_types.add(t.tensor_type.name)
        decoded = gguf.quants.dequantize(t.data, t.tensor_type).reshape(codes.shape)
        # exact: the codes, each block scaled by gamma rounded to float16
        np.testing.assert_array_equal(decoded, codes * np.float32(np.float16(gamma)))
        np.testing.assert_allclose(decoded, codes * gamma, rtol=2**-11, atol=0)
        if codes.shape[1] % 256 == 0:
            assert t.tensor_type.name == qname
            assert 8 * t.n_bytes / t.n_elements == bpw  # bits per weight from the file's size
        else:
            assert t.tensor_type.name == "F16"  # llama.cpp's own fallback for such rows
    assert seen_types == {qname, "F16"}
    # the full-precision rest round-trips exactly (F32)
    for key, value in packed.state_dict.items():
        if key.endswith((".codes", ".scale")):
            continue
        t = tensors[key]
        np.testing.assert_array_equal(
            gguf.quants.dequantize(t.data, t.tensor_type).reshape(value.shape), value.numpy()
        )
    assert manifest["tensor_types"][qname]["bits_per_weight"] == bpw
    assert manifest["gguf"]["f16_fallback_tensors"] == ["blocks.0.ffn.down_proj.weight"]
    assert manifest["scheme"] == "ternary"


def test_tq1_is_smaller_than_tq2_and_manifest_checksums_match(tmp_path: Path) -> None:
    ckpt = _byte_lm_checkpoint(tmp_path)
    sizes = {}
    for fmt in QTYPES:
        manifest = export_model(ckpt, fmt, tmp_path / fmt)
        path = tmp_path / fmt / "model.gguf"
        sizes[fmt] = path.stat().st_size
        import hashlib

        assert manifest["files"]["model.gguf"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (
            json.loads((tmp_path / fmt / "source_manifest.json").read_text())["sha256"]
            == (manifest["source"]["tensors_sha256"])
        )
    assert sizes["gguf-tq1"] < sizes["gguf-tq2"]


def _tiny_llama_checkpoint(root: Path, *, tokenizer: bool, post_attn: bool = False) -> Path:
    import transformers

    from trainables.models.hf_lm import build_hf_lm

    tok = None
    if tokenizer:
        from hf_fixtures import tiny_tokenizer

        tok = tiny_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tok) if tok is not None else 264,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    base = root / "base"
    transformers.LlamaForCausalLM(config).save_pretrained(base)
    if tok is not None:
        tok.save_pretrained(base)
    model = build_hf_lm(
        {"hf_path": str(base), "seq_len": 16, "rmsnorm_post_attn": post_attn}, "ternary"
    )
    manifest = {
        "architecture": {"arch": "hf_causal_lm", "config": model.config.to_dict()},
        "base_model": str(base),
        "model_type": "bitsweep-hf_causal_lm-ternary",
    }
    return save_packed_checkpoint(model, root / "ckpt", manifest=manifest)


def _reference_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute, written out independently
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def test_llama_gguf_has_llama_metadata_and_permuted_qk(tmp_path: Path) -> None:
    ckpt = _tiny_llama_checkpoint(tmp_path, tokenizer=True)
    manifest = export_model(ckpt, "gguf-tq2", tmp_path / "out")
    reader = gguf.GGUFReader(str(tmp_path / "out" / "model.gguf"))
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.embedding_length") == 256
    assert _field(reader, "llama.block_count") == 1
    assert _field(reader, "llama.attention.head_count") == 4
    assert _field(reader, "llama.attention.head_count_kv") == 2
    assert _field(reader, "llama.rope.dimension_count") == 64
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    vocab = _field(reader, "llama.vocab_size")
    assert len(reader.get_field("tokenizer.ggml.tokens").data) == vocab
    tensors = {t.name: t for t in reader.tensors}
    assert {
        "token_embd.weight",
        "output_norm.weight",
        "output.weight",
        "blk.0.ffn_down.weight",
    } <= (set(tensors))
    packed = load_packed_checkpoint(ckpt)
    prefix = "model.model.layers.0.self_attn"
    for proj, gguf_name, heads in (("q_proj", "attn_q", 4), ("k_proj", "attn_k", 2),
                                   ("v_proj", "attn_v", None)):  # fmt: skip
        codes = packed.state_dict[f"{prefix}.{proj}.codes"].numpy().astype(np.float32)
        gamma = np.float32(np.float16(float(packed.state_dict[f"{prefix}.{proj}.scale"])))
        expected = codes if heads is None else _reference_permute(codes, heads)
        t = tensors[f"blk.0.{gguf_name}.weight"]
        assert t.tensor_type.name == "TQ2_0"
        decoded = gguf.quants.dequantize(t.data, t.tensor_type).reshape(codes.shape)
        np.testing.assert_array_equal(decoded, expected * gamma)
    head = tensors["output.weight"]
    np.testing.assert_array_equal(
        gguf.quants.dequantize(head.data, head.tensor_type).reshape(-1),
        packed.state_dict["model.lm_head.weight"].numpy().reshape(-1),
    )
    assert manifest["tensor_types"]["TQ2_0"]["bits_per_weight"] == 2.0625
    assert manifest["gguf"]["architecture"] == "llama"


def test_llama_gguf_refuses_post_attention_norm(tmp_path: Path) -> None:
    ckpt = _tiny_llama_checkpoint(tmp_path, tokenizer=False, post_attn=True)
    with pytest.raises(ExportError, match="rmsnorm_post_attn"):
        export_model(ckpt, "gguf-tq1", tmp_path / "out")


def test_unknown_format_and_no_ternary_layers_are_refused(tmp_path: Path) -> None:
    ckpt = _byte_lm_checkpoint(tmp_path)
    with pytest.raises(ExportError, match="valid: hf-bitnet, gguf-tq2, gguf-tq1"):
        export_model(ckpt, "gguf-q4", tmp_path / "out")
    assert read_source(ckpt).arch == "byte_lm"


def test_bit_lm_gguf_is_the_bitsweep_bit_lm_architecture(tmp_path: Path) -> None:
    from trainables.models.bit_lm import BitLM
    from trainables.models.bit_lm_config import BitLMConfig

    cfg = BitLMConfig(d_model=256, n_layers=1, n_heads=4, d_ff=512, seq_len=18)
    torch.manual_seed(0)
    model = prepare(BitLM(cfg), "ternary")
    manifest = {"architecture": {"arch": "bit_lm", "config": model.config.to_dict()}}
    ckpt = save_packed_checkpoint(model, tmp_path / "ckpt", manifest=manifest)
    export_model(ckpt, "gguf-tq1", tmp_path / "out")
    reader = gguf.GGUFReader(str(tmp_path / "out" / "model.gguf"))
    assert _field(reader, "general.architecture") == "bitsweep-bit-lm"
    assert _field(reader, "bitsweep-bit-lm.seq_len") == 18
    layers = json.loads(_field(reader, "bitsweep.ternary_layers"))
    packed = load_packed_checkpoint(ckpt)
    tensors = {t.name: t for t in reader.tensors}
    assert set(layers) == set(packed.manifest["ternary_layers"])
    for name, info in layers.items():
        codes = packed.state_dict[f"{name}.codes"].numpy().astype(np.float32)
        assert info["scale"] == float(packed.state_dict[f"{name}.scale"])
        t = tensors[f"{name}.weight"]
        assert t.tensor_type.name == "TQ1_0"
        decoded = gguf.quants.dequantize(t.data, t.tensor_type).reshape(codes.shape)
        np.testing.assert_array_equal(decoded, codes * np.float32(np.float16(info["scale"])))
