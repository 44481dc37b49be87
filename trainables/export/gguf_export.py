"""Export a ternary model as a GGUF file with TQ2_0 or TQ1_0 tensors (the ``gguf`` package).

The ternary weights ``codes * gamma`` are quantized by gguf's own ``gguf.quants.quantize``: TQ2_0
(2 bits a weight, 66 bytes a block of 256: 2.0625 bits/weight) or TQ1_0 (base 3, 54 bytes a
block: 1.6875 bits/weight). Each 256-weight block stores ``d = max |w|`` of the block as float16;
for a BitNet tensor every non-zero block's maximum is its single scale ``gamma``, so every block
scale is ``fp16(gamma)`` (relative error at most 2^-11 in fp16's normal range) and the codes are
exact; an all-zero block stores ``d = 0`` and decodes to the exact zeros. A tensor whose rows are
not a multiple of 256 cannot be block-quantized: it is written as F16 ``codes * gamma``
(what llama.cpp's own converter does), which is ``codes * fp16(gamma)`` exactly, the same values.

Architectures:

* ``hf_causal_lm`` from a Llama-family model: ``general.architecture = llama`` with the usual
  ``llama.*`` keys, gguf's tensor names (``blk.N.attn_q.weight``, ...) and, as llama.cpp's
  ``convert_hf_to_gguf.py`` does, the rows of ``attn_q`` / ``attn_k`` permuted from Hugging Face's
  rotate-half RoPE layout to GGML's interleaved one. A tokenizer.json (BPE) of the base model is
  written as ``tokenizer.ggml.*`` (``gpt2``), else ``tokenizer.ggml.model = none``.
* ``byte_lm`` / ``bit_lm`` (and any other bitsweep model): a documented custom architecture,
  ``bitsweep-byte-lm`` / ``bitsweep-bit-lm`` (``bitsweep-<arch>``), whose tensors keep bitsweep's
  state-dict names (a ternary layer's codes and scale as ``<layer>.weight``) and whose keys are
  ``<architecture>.<field>`` for every scalar field of the model config, plus
  ``bitsweep.ternary_layers`` (JSON: act_bits, hadamard block, scale of each layer) and
  ``bitsweep.source_manifest``. llama.cpp has no compute graph for these: the file is for GGUF
  tooling and for runtimes that implement the architecture.

Activation quantization differs at inference in llama.cpp: its TQ kernels quantize activations to
Q8_K (8 bits with one absmax scale per 256-value block of a token, finer than BitNet's one scale
per token) and F16 fallback tensors multiply unquantized activations. Weights are the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .manifest import tensor_type_summary, write_export_manifest
from .source import ADAPTER_PREFIX, ExportError, ExportSource, TernaryTensor

GGUF_FILE = "model.gguf"
FORMATS = ("gguf-tq2", "gguf-tq1")
CUSTOM_ARCH = {"byte_lm": "bitsweep-byte-lm", "bit_lm": "bitsweep-bit-lm"}
MAX_NAME = 63  # GGML_MAX_NAME - 1
POST_ATTN_NORM = "post_attn_norm"


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "GGUF export needs the 'gguf' package: pip install bitsweep[export]"
        ) from err
    return gguf


def architecture_name(arch: str) -> str:
    """The GGUF ``general.architecture`` of a bitsweep arch that is not a Llama-family model."""
    return CUSTOM_ARCH.get(arch, f"bitsweep-{arch.replace('_', '-')}")


def ternary_values(t: TernaryTensor, codes: Tensor | None = None) -> np.ndarray:
    """``codes * gamma`` as float32 ``[out, in]`` (the deployed layer's weight)."""
    c = t.codes if codes is None else codes
    return (c.to(torch.float32) * torch.tensor(t.scale, dtype=torch.float32)).numpy()


def quantize_ternary(values: np.ndarray, qtype: Any) -> tuple[np.ndarray, Any]:
    """Block-quantize ``values`` with gguf's own quantizer; rows not a multiple of the block
    size fall back to F16 (exact for ``codes * gamma`` up to the fp16 rounding of gamma)."""
    gguf = _gguf()
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if values.shape[-1] % block:
        return values.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(values, qtype), qtype


def hf_to_ggml_rope_rows(codes: Tensor, n_head: int) -> Tensor:
    """Permute q/k rows ``[n_head * head_dim, in]`` from HF rotate-half to GGML interleaved RoPE
    (``LlamaModel.permute`` of llama.cpp's convert_hf_to_gguf.py)."""
    out = codes.shape[0]
    return (
        codes.reshape(n_head, 2, out // n_head // 2, *codes.shape[1:])
        .transpose(1, 2)
        .reshape(codes.shape)
    )


def _plain_array(value: Tensor) -> np.ndarray:
    if value.is_floating_point():
        return value.detach().float().contiguous().numpy()
    if value.dtype == torch.bool:
        return value.to(torch.int8).numpy()
    return value.detach().contiguous().numpy()


def _add_scalar_keys(writer: Any, prefix: str, config: dict[str, Any]) -> None:
    for key, value in sorted(config.items()):
        name = f"{prefix}.{key}"
        if isinstance(value, bool):
            writer.add_bool(name, value)
        elif isinstance(value, int):
            writer.add_int64(name, value)
        elif isinstance(value, float):
            writer.add_float64(name, value)
        elif isinstance(value, str):
            writer.add_string(name, value)
        elif (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            writer.add_array(name, [int(v) for v in value])


def _bitsweep_keys(writer: Any, source: ExportSource) -> None:
    layers = {
        t.name: {
            "act_bits": t.act_bits,
            "hadamard_block": t.hadamard_block,
            "scale": t.scale,
            "shape": list(t.codes.shape),
        }
        for t in source.ternary.values()
    }
    writer.add_string("bitsweep.scheme", source.scheme)
    writer.add_string("bitsweep.ternary_layers", json.dumps(layers, sort_keys=True))
    writer.add_string("bitsweep.source_manifest", json.dumps(source.manifest, sort_keys=True))


def _llama_keys(writer: Any, config: Any) -> None:
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(int(config.vocab_size))


def _add_tokenizer(writer: Any, base: Path | None, vocab_size: int) -> None:
    """The base model's BPE tokenizer.json as ``tokenizer.ggml.*`` (gpt2), else ``none``."""
    path = base / "tokenizer.json" if base is not None else None
    data = json.loads(path.read_text()) if path is not None and path.is_file() else None
    model = (data or {}).get("model") or {}
    if model.get("type") != "BPE":
        writer.add_tokenizer_model("none")
        return
    gguf = _gguf()
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    special = {t["id"]: t["content"] for t in data.get("added_tokens", []) if t.get("special")}
    for tid, content in special.items():
        vocab[content] = tid
    by_id = {i: tok for tok, i in vocab.items()}
    tokens, types = [], []
    for i in range(max(vocab_size, len(by_id))):
        if i in by_id:
            tokens.append(by_id[i])
            control = i in special
            types.append(gguf.TokenType.CONTROL if control else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    config_path = base / "tokenizer_config.json" if base is not None else None
    if config_path is not None and config_path.is_file():
        eos = json.loads(config_path.read_text()).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if eos in vocab:
            writer.add_eos_token_id(int(vocab[eos]))


def _check_llama(source: ExportSource) -> None:
    if source.arch_config.get("rmsnorm_post_attn") or any(POST_ATTN_NORM in k for k in source.rest):
        raise ExportError(
            "this model was trained with model.rmsnorm_post_attn=true: llama.cpp's llama "
            "architecture has no RMSNorm after attention; retrain with model.rmsnorm_post_attn="
            "false"
        )
    for t in source.ternary.values():
        if t.hadamard_block is not None or t.norm_weight is not None:
            what = "a Hadamard transform" if t.hadamard_block is not None else "an input norm"
            raise ExportError(
                f"layer {t.name!r} has {what}, which llama.cpp's llama graph does "
                "not compute; train with quant.scheme=ternary and no input norm"
            )


def _llama_tensors(
    source: ExportSource, config: Any
) -> list[tuple[str, str, np.ndarray | TernaryTensor]]:
    """(gguf name, kind, tensor) for a Llama-family checkpoint; q/k rows permuted."""
    gguf = _gguf()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config.num_hidden_layers))
    keys = [*source.ternary, *source.rest]
    cut = len(ADAPTER_PREFIX) if keys and all(k.startswith(ADAPTER_PREFIX) for k in keys) else 0
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)

    def mapped(key: str) -> str:
        name = names.get_name(key[cut:], try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"tensor {key[cut:]!r} has no llama GGUF name: not a Llama model?")
        return name

    out: list[tuple[str, str, np.ndarray | TernaryTensor]] = []
    for t in source.ternary.values():
        name = mapped(f"{t.name}.weight")
        codes = t.codes
        if name.endswith("attn_q.weight"):
            codes = hf_to_ggml_rope_rows(codes, heads)
        elif name.endswith("attn_k.weight"):
            codes = hf_to_ggml_rope_rows(codes, kv_heads)
        out.append((name, "ternary", TernaryTensor(t.name, codes, t.scale, t.act_bits, None)))
        if t.bias is not None:
            out.append((mapped(f"{t.name}.bias"), "plain", _plain_array(t.bias)))
    for key, value in source.rest.items():
        if key[cut:] == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue
        out.append((mapped(key), "plain", _plain_array(value)))
    return out


def _custom_tensors(source: ExportSource) -> list[tuple[str, str, np.ndarray | TernaryTensor]]:
    out: list[tuple[str, str, np.ndarray | TernaryTensor]] = []
    for t in source.ternary.values():
        out.append((f"{t.name}.weight", "ternary", t))
        if t.bias is not None:
            out.append((f"{t.name}.bias", "plain", _plain_array(t.bias)))
        if t.norm_weight is not None:
            out.append((f"{t.name}.norm.weight", "plain", _plain_array(t.norm_weight)))
    out.extend((key, "plain", _plain_array(value)) for key, value in source.rest.items())
    for name, _, _ in out:
        if len(name) > MAX_NAME:
            raise ExportError(f"tensor name {name!r} is longer than GGUF's {MAX_NAME} characters")
    return out


def export_gguf(
    source: ExportSource,
    out: str | os.PathLike[str],
    export_format: str = "gguf-tq2",
    *,
    base_model: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write ``source`` as ``<out>/model.gguf`` with TQ2_0 (``gguf-tq2``) or TQ1_0 (``gguf-tq1``)
    ternary tensors, plus the export manifest.

    Args:
        source: the verified packed checkpoint.
        out: the output directory (created).
        export_format: ``gguf-tq2`` or ``gguf-tq1``.
        base_model: for ``hf_causal_lm``, the Hugging Face directory (config, tokenizer; default
            the run's ``model.hf_path``).

    Returns:
        The export manifest as written, with the bits per weight of each tensor type measured on
        the file (``tensor_types``).
    """
    gguf = _gguf()
    if export_format not in FORMATS:
        raise ExportError(f"unknown GGUF format {export_format!r}; valid: {', '.join(FORMATS)}")
    if not source.ternary:
        raise ExportError("the checkpoint has no ternary layers (quant.scheme ternary) to export")
    qtype = (
        gguf.GGMLQuantizationType.TQ2_0
        if export_format == "gguf-tq2"
        else (gguf.GGMLQuantizationType.TQ1_0)
    )
    file_type = (
        gguf.LlamaFileType.MOSTLY_TQ2_0
        if export_format == "gguf-tq2"
        else (gguf.LlamaFileType.MOSTLY_TQ1_0)
    )
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    path = target / GGUF_FILE
    base: Path | None = None
    if source.arch == "hf_causal_lm":
        import transformers

        _check_llama(source)
        given = base_model or source.arch_config.get("hf_path") or source.manifest.get("base_model")
        base = Path(str(given)).expanduser() if given else None
        if base is None or not (base / "config.json").is_file():
            raise ExportError(
                f"base model directory {str(base)!r} has no config.json: pass "
                "--base-model DIR (the Hugging Face model it was converted from)"
            )
        config = transformers.AutoConfig.from_pretrained(str(base), local_files_only=True)
        if config.model_type not in ("llama", "mistral"):
            raise ExportError(
                f"GGUF export of Hugging Face models supports the llama family; "
                f"this base model is {config.model_type!r}"
            )
        arch = "llama"
        tensors = _llama_tensors(source, config)
        add_keys: Callable[[Any], None] = lambda w: _llama_keys(w, config)  # noqa: E731
    else:
        arch = architecture_name(source.arch)
        tensors = _custom_tensors(source)
        add_keys = lambda w: _add_scalar_keys(w, arch, source.arch_config)  # noqa: E731
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(str(source.manifest.get("model_type") or arch))
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_keys(writer)
    if arch == "llama":
        _add_tokenizer(writer, base, int(config.vocab_size))
    _bitsweep_keys(writer, source)
    fallbacks: list[str] = []
    for name, kind, tensor in tensors:
        if kind == "ternary":
            assert isinstance(tensor, TernaryTensor)
            data, used = quantize_ternary(ternary_values(tensor), qtype)
            if used != qtype:
                fallbacks.append(name)
            writer.add_tensor(name, data, raw_dtype=used)
        else:
            assert isinstance(tensor, np.ndarray)
            writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = gguf.GGUFReader(str(path))
    rows = [(t.tensor_type.name, int(t.n_elements), int(t.n_bytes)) for t in reader.tensors]
    scales = [t.scale for t in source.ternary.values() if t.scale]
    scale_error = max((abs(float(np.float16(s)) - s) / s for s in scales), default=0.0)
    extra = {
        "gguf": {
            "architecture": arch,
            "quantization": qtype.name,
            "f16_fallback_tensors": fallbacks,
            "block_scale": "fp16(gamma) in every non-zero 256-block; codes exact",
            "max_relative_scale_error": scale_error,
        }
    }
    manifest = write_export_manifest(
        source,
        target,
        export_format,
        files=[GGUF_FILE],
        tensor_types=tensor_type_summary(rows),
        extra=extra,
    )
    return json.loads(manifest.read_text())
