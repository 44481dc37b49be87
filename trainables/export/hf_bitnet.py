"""Export an ``hf_causal_lm`` model as a directory transformers loads with its BitNet integration.

``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` reads ``config.json``'s
``quantization_config`` (``quant_method: bitnet``, ``linear_class: bitlinear``,
``quantization_mode: offline``) and swaps every ``nn.Linear`` not listed in
``modules_to_not_convert`` for its ``BitLinear`` (transformers/integrations/bitnet.py), whose
buffers this module writes in transformers' own layout:

* ``weight``: uint8 ``[out / 4, in]``; value ``code + 1`` of row ``k * out / 4 + i`` sits in bits
  ``2k, 2k + 1`` of packed row ``i`` (4 codes a byte along the *output* dimension, in four
  contiguous blocks of rows, not interleaved), so ``out`` must be a multiple of 4;
* ``weight_scale``: ``[1]``, the *reciprocal* of BitNet's absmean ``gamma``: transformers computes
  ``F.linear(x_codes, W_codes) / (input_scale * weight_scale)`` with ``input_scale = 127 /
  max|x|`` per token, which equals ``(x_codes / input_scale) @ (W_codes * gamma)^T``, what
  bitsweep's deployed ``TernaryLinear`` computes;
* activations: per-token absmax to 8 bits, ``clamp(round(x * 127 / max(|x|, 1e-5)), -128, 127)``
  in both (bitsweep's ``activation_codes`` with ``act_bits=8`` and ``eps=1e-5``), so only
  ``act_bits=8`` exports; a BitLinear input norm maps to transformers' ``use_rms_norm`` (a
  ``LlamaRMSNorm`` with the eps of ``torch.nn.RMSNorm``'s default, float32 machine epsilon).

Refused, with the reason: the ``hadamard`` scheme (transformers' BitLinear has no Hadamard
transform), an RMSNorm after attention (``model.rmsnorm_post_attn``: transformers' Llama has no
such norm), other activation bit-widths, and an output size that is not a multiple of 4.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from .manifest import tensor_type_summary, write_export_manifest
from .source import ADAPTER_PREFIX, ExportError, ExportSource, TernaryTensor

VALUES_PER_BYTE = 4  # transformers.integrations.bitnet.VALUES_PER_ITEM
ACT_BITS = 8  # transformers' BitLinear.activation_quant(num_bits=8)
TENSORS_FILE = "model.safetensors"
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
)
POST_ATTN_NORM = "post_attn_norm"  # trainables.models.hf_convert.POST_ATTN_NORM


def pack_bitnet_weight(codes: Tensor) -> Tensor:
    """Pack ternary codes ``[out, in]`` into transformers' BitNet layout ``uint8 [out / 4, in]``.

    Block ``k`` of ``out / 4`` rows goes to bits ``2k, 2k + 1`` (``code + 1`` in 0..2), the inverse
    of ``transformers.integrations.bitnet.unpack_weights``.
    """
    out, inp = codes.shape
    if out % VALUES_PER_BYTE:
        raise ExportError(
            f"a BitNet weight needs a number of output rows divisible by {VALUES_PER_BYTE}, "
            f"got {out}"
        )
    digits = (codes.to(torch.int16) + 1).to(torch.uint8).reshape(VALUES_PER_BYTE, out // 4, inp)
    packed = digits[0] | (digits[1] << 2) | (digits[2] << 4) | (digits[3] << 6)  # [out/4, in]
    return packed.contiguous()


def _strip_adapter(names: list[str]) -> bool:
    """Whether the checkpoint's keys carry HFCausalLMAdapter's ``model.`` prefix on every key."""
    return bool(names) and all(n.startswith(ADAPTER_PREFIX) for n in names)


def _check_exportable(source: ExportSource) -> None:
    if source.arch != "hf_causal_lm":
        raise ExportError(
            f"--format hf-bitnet exports models trained with model.arch=hf_causal_lm; this "
            f"checkpoint is a {source.arch!r} model: use --format gguf-tq2 or gguf-tq1"
        )
    post_norms = [k for k in source.rest if f".{POST_ATTN_NORM}." in f".{k}"]
    if source.arch_config.get("rmsnorm_post_attn") or post_norms:
        raise ExportError(
            "this model was trained with model.rmsnorm_post_attn=true: transformers' Llama has no "
            "RMSNorm after attention, so hf-bitnet cannot reproduce it; retrain with "
            "model.rmsnorm_post_attn=false or use --format gguf-tq2"
        )
    if not source.ternary:
        raise ExportError("the checkpoint has no ternary layers (quant.scheme ternary) to export")
    for t in source.ternary.values():
        if t.hadamard_block is not None:
            raise ExportError(
                f"layer {t.name!r} uses the hadamard scheme (H-BitLinear): transformers' BitNet "
                "BitLinear has no Hadamard transform; train with quant.scheme=ternary"
            )
        if t.act_bits != ACT_BITS:
            raise ExportError(
                f"layer {t.name!r} quantizes activations to {t.act_bits} bits; transformers' "
                f"BitNet integration uses {ACT_BITS}: train with quant.act_bits={ACT_BITS}"
            )
    with_norm = {t.norm_weight is not None for t in source.ternary.values()}
    if len(with_norm) > 1:
        raise ExportError(
            "some ternary layers have an input norm and some do not: transformers' "
            "use_rms_norm applies to every BitLinear"
        )


def _base_directory(source: ExportSource, base_model: str | os.PathLike[str] | None) -> Path:
    given = base_model or source.arch_config.get("hf_path") or source.manifest.get("base_model")
    if not given:
        raise ExportError("the checkpoint does not name its base model: pass --base-model DIR")
    directory = Path(str(given)).expanduser()
    if not (directory / "config.json").is_file():
        raise ExportError(
            f"base model directory {str(directory)!r} (model.hf_path of the run) has no "
            "config.json: pass --base-model DIR pointing at the Hugging Face model it was "
            "converted from"
        )
    return directory


def _ternary_tensors(t: TernaryTensor, name: str) -> dict[str, Tensor]:
    tensors = {
        f"{name}.weight": pack_bitnet_weight(t.codes),
        # transformers divides by weight_scale: the reciprocal of the absmean gamma
        f"{name}.weight_scale": torch.tensor([1.0 / t.scale if t.scale else float("inf")]),
    }
    if t.bias is not None:
        tensors[f"{name}.bias"] = t.bias.float().contiguous()
    if t.norm_weight is not None:
        tensors[f"{name}.rms_norm.weight"] = t.norm_weight.float().contiguous()
    return tensors


def export_hf_bitnet(
    source: ExportSource,
    out: str | os.PathLike[str],
    *,
    base_model: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write ``source`` (an ``hf_causal_lm`` checkpoint) as a transformers BitNet directory.

    Args:
        source: the verified packed checkpoint (:func:`~trainables.export.source.read_source`).
        out: the output directory (created; files in it are overwritten).
        base_model: the Hugging Face directory the model was converted from (default: the run's
            ``model.hf_path`` recorded in the checkpoint); its config and tokenizer are reused.

    Returns:
        The export manifest as written (``export_manifest.json``).
    """
    import transformers

    _check_exportable(source)
    base = _base_directory(source, base_model)
    config = transformers.AutoConfig.from_pretrained(str(base), local_files_only=True)
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(config)
    expected = set(skeleton.state_dict())
    linears = {n for n, m in skeleton.named_modules() if isinstance(m, nn.Linear)}
    strip = _strip_adapter([*source.ternary, *source.rest])
    cut = len(ADAPTER_PREFIX) if strip else 0
    tensors: dict[str, Tensor] = {}
    rows: list[tuple[str, int, int]] = []
    ternary_names = set()
    for t in source.ternary.values():
        name = t.name[cut:]
        if name not in linears:
            raise ExportError(
                f"ternary layer {name!r} is not a Linear of the base model's "
                f"{type(skeleton).__name__}: wrong --base-model?"
            )
        ternary_names.add(name)
        written = _ternary_tensors(t, name)
        tensors.update(written)
        packed = written[f"{name}.weight"]
        rows.append(("bitnet_2bit", t.codes.numel(), packed.numel() + 4))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for key, value in source.rest.items():
        name = key[cut:]
        if tied and name == "lm_head.weight":
            continue
        if name not in expected:
            raise ExportError(
                f"tensor {name!r} of the checkpoint has no place in the base "
                f"model's {type(skeleton).__name__}"
            )
        tensors[name] = value.float().contiguous() if value.is_floating_point() else value
        rows.append(("F32", value.numel(), value.numel() * 4))
    missing = sorted(k for k in expected - set(tensors) if not (tied and k == "lm_head.weight"))
    if missing:
        raise ExportError(
            f"the checkpoint lacks {len(missing)} tensors of the base model, "
            f"e.g. {missing[0]!r}: wrong --base-model?"
        )
    use_norm = any(t.norm_weight is not None for t in source.ternary.values())
    config.quantization_config = {
        "quant_method": "bitnet",
        "linear_class": "bitlinear",
        "quantization_mode": "offline",
        "modules_to_not_convert": sorted(linears - ternary_names),
        "use_rms_norm": use_norm,
        "rms_norm_eps": torch.finfo(torch.float32).eps,
    }
    config.dtype = torch.float32
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(target))
    save_file(tensors, str(target / TENSORS_FILE), metadata={"format": "pt"})
    files = ["config.json", TENSORS_FILE]
    for name in COPIED_FILES:
        if (base / name).is_file():
            shutil.copyfile(base / name, target / name)
            files.append(name)
    extra = {
        "packing": {
            "ternary": "transformers BitNet: uint8 [out/4, in], code+1 in 2 bits, row block k "
            "of out/4 in bits 2k..2k+1; weight_scale = 1/gamma",
            "activations": "per-token absmax, 8 bits, eps 1e-5 (same convention in both)",
        },
        "quantization_config": config.quantization_config,
    }
    path = write_export_manifest(
        source,
        target,
        "hf-bitnet",
        files=files,
        tensor_types=tensor_type_summary(rows),
        extra=extra,
    )
    return json.loads(path.read_text())
