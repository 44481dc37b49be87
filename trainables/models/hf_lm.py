"""A local Hugging Face causal LM as a bitsweep model (``model.arch: hf_causal_lm``, seed 003).

The model is read from a local directory (``model.hf_path``; nothing is downloaded), converted with
:func:`~trainables.models.hf_convert.convert_hf_model` and wrapped in
:class:`~trainables.models.hf_convert.HFCausalLMAdapter`, whose ``config`` is an
:class:`HFLMConfig`: what a checkpoint stores to rebuild the converted model (the path and the
conversion options; the quantization options come from the run config, as for the byte LM).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.data.errors import DataError

from .hf_convert import HFCausalLMAdapter, convert_hf_model, load_hf_model

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.safetensors.index.json")
KEY = "model.hf_path"


@dataclass(frozen=True)
class HFLMConfig:
    """What rebuilds a converted Hugging Face model: its directory and the conversion options.

    Attributes:
        hf_path: the local model directory (``save_pretrained`` layout).
        seq_len: the training window length in tokens.
        rmsnorm_post_attn: an RMSNorm after every attention block (seed 003).
        vocab_size: the model's vocabulary size (read from the directory; for checks only).
    """

    hf_path: str
    seq_len: int
    rmsnorm_post_attn: bool = False
    vocab_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (what a checkpoint's architecture stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HFLMConfig:
        """Rebuild from :meth:`to_dict` output."""
        return cls(**{k: data[k] for k in ("hf_path", "seq_len", "rmsnorm_post_attn", "vocab_size")
                      if k in data})  # fmt: skip


def check_hf_model_dir(path: str | os.PathLike[str] | None) -> Any:
    """Check that ``path`` is a local causal-LM directory; returns its ``transformers`` config.

    Raises:
        DataError: naming ``model.hf_path`` when the path is unset or missing, is not a directory,
            has no ``config.json`` or weights, or holds a model that is not a causal LM.
    """
    fix = "give a local directory written by save_pretrained (config.json and weights)"
    if path is None or str(path) == "":
        raise DataError(KEY, "is not set", f"{fix}: model.hf_path=DIR")
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise DataError(KEY, f"{str(directory)!r} is not an existing directory", fix)
    if not (directory / "config.json").is_file():
        raise DataError(KEY, f"{str(directory)!r} has no config.json", fix)
    if not any(any(directory.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise DataError(KEY, f"{str(directory)!r} has no weights (*.safetensors or *.bin)", fix)
    try:
        import transformers
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise DataError(KEY, "needs the optional 'transformers' package",
                        "pip install bitsweep[hf]") from None  # fmt: skip
    try:
        config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        problem = f"{str(directory)!r} has an unreadable config.json ({err})"
        raise DataError(KEY, problem, fix) from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    # the names table: checking the lazy class mapping would import every model's config
    if getattr(config, "model_type", None) not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise DataError(
            KEY,
            f"{str(directory)!r} holds a {config.model_type!r} model, which is not a causal LM",
            "give a causal language model (AutoModelForCausalLM), for example a Llama or Qwen",
        )
    return config


def build_hf_lm(
    config: HFLMConfig | Mapping[str, Any],
    scheme: str,
    *,
    keep_head: bool = True,
    **quant_options: Any,
) -> HFCausalLMAdapter:
    """Load ``config.hf_path`` in float32, convert it to ``scheme`` and wrap it.

    The post-attention norms (``rmsnorm_post_attn``) are calibrated on fixed random tokens, so a
    rebuild for a resume is the same model before the checkpoint's weights are loaded.
    """
    cfg = config if isinstance(config, HFLMConfig) else HFLMConfig.from_dict(config)
    hf_config = check_hf_model_dir(cfg.hf_path)
    limit = getattr(hf_config, "max_position_embeddings", None)
    if limit is not None and cfg.seq_len > int(limit):
        raise DataError(
            "model.seq_len",
            f"{cfg.seq_len} is longer than the model's max_position_embeddings={limit}",
            f"use model.seq_len <= {limit}",
        )
    model = load_hf_model(cfg.hf_path, dtype=torch.float32)
    model.train()
    converted = convert_hf_model(
        model, scheme, rmsnorm_post_attn=cfg.rmsnorm_post_attn, keep_head=keep_head,
        **quant_options,
    )  # fmt: skip
    adapter = HFCausalLMAdapter(converted)
    vocab = int(getattr(hf_config, "vocab_size", 0) or 0)
    adapter.config = HFLMConfig(cfg.hf_path, cfg.seq_len, cfg.rmsnorm_post_attn, vocab)
    return adapter


def load_base_model(path: str | os.PathLike[str]) -> nn.Module:
    """The unconverted model of ``path`` in float32 and eval mode (for self-generation)."""
    check_hf_model_dir(path)
    return load_hf_model(path, dtype=torch.float32).eval()
