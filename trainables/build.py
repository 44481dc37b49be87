"""From a :class:`RunConfig` to data and a (quantized) model, and back from a saved architecture."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from trainables.config import RunConfig
from trainables.data import (
    BitCorpus,
    ByteCorpus,
    ImageClassificationData,
    load_byte_corpus,
    load_vision_data,
)
from trainables.quant import prepare

TaskData = ByteCorpus | ImageClassificationData


@dataclass(frozen=True)
class Architecture:
    """What rebuilds a model: its ``arch`` name and its model config as a plain dict.

    Growth changes the config (more layers, wider), so checkpoints store this, not the run config.
    """

    arch: str
    config: dict[str, Any]


def load_task_data(cfg: RunConfig) -> TaskData:
    """Load the data the config names (all local). Raises ``DataError`` naming the setting."""
    if cfg.model.arch == "hf_causal_lm":  # tokens of the model's tokenizer (seed 003)
        from trainables.hf_pipeline import load_hf_corpus

        return load_hf_corpus(cfg)
    if cfg.task.kind == "lm":
        corpus = load_byte_corpus(
            cfg.data.source,
            text_column=cfg.data.text_column,
            val_frac=cfg.data.val_frac,
            max_bytes=cfg.data.max_bytes,
        )
        # the bit LM reads the same bytes as 9 bits each (8 data bits and even parity)
        return BitCorpus.from_corpus(corpus) if cfg.model.arch == "bit_lm" else corpus
    return load_vision_data(cfg.data.source, path=cfg.data.path, seed=cfg.train.seed)


def initial_architecture(cfg: RunConfig, data: TaskData) -> Architecture:
    """The architecture a run starts from, derived from the ``model`` and ``loss`` sections."""
    m = cfg.model
    if m.arch == "hf_causal_lm":
        from trainables.hf_pipeline import hf_architecture_config

        return Architecture("hf_causal_lm", hf_architecture_config(cfg))
    if m.arch == "byte_lm":
        config = {
            "d_model": m.d_model,
            "n_layers": m.n_layers,
            "n_heads": m.n_heads,
            "d_ff": m.d_ff,
            "seq_len": m.seq_len,
            "ffn": m.ffn,
            "subln": m.subln,
            "rmsnorm_post_attn": m.rmsnorm_post_attn,
            "dropout": m.dropout,
            "grad_checkpointing": m.grad_checkpointing,
            "early_exit": m.early_exit,
            "target_exit_layer": cfg.loss.target_exit_layer,
            "exit_threshold": m.exit_threshold,
            "exit_mode": m.exit_mode,
            "exit_aggregate": m.exit_aggregate,
            "exit_task_loss": m.exit_task_loss,
            "gate_dropout": m.gate_dropout,
            "exit_loss": cfg.loss.lambda_exit > 0,
            "exit_loss_weighting": m.exit_loss_weighting,
            "exit_curriculum": m.exit_curriculum,
            "exit_rotation": m.exit_rotation,
            "exit_gradual_steps": m.exit_gradual_steps,
            "layer_dropout": m.layer_dropout,
            "layer_dropout_schedule": m.layer_dropout_schedule,
        }
        return Architecture("byte_lm", config)
    if m.arch == "bit_lm":
        bit_config = {
            "d_model": m.d_model,
            "n_layers": m.n_layers,
            "n_heads": m.n_heads,
            "d_ff": m.d_ff,
            "seq_len": m.seq_len,
            "dropout": m.dropout,
            "causal": m.causal,
            "reversible": m.reversible,
            "grad_checkpointing": m.grad_checkpointing,
            "act": m.act,
            "act_eps": m.act_eps,
            "attn_chunk": m.attn_chunk,
            "full_attn_logging": m.full_attn_logging,
            "byte_phase": m.byte_phase,
        }
        return Architecture("bit_lm", bit_config)
    assert isinstance(data, ImageClassificationData)
    config = {
        "in_channels": data.in_channels,
        "image_size": data.image_size,
        "num_classes": data.num_classes,
    }
    if m.arch == "conv":
        config["widths"] = tuple(m.widths)
    else:
        config["hidden"] = tuple(m.hidden)
    return Architecture(m.arch, config)


def build_float_model(architecture: Architecture) -> nn.Module:
    """The full-precision model of ``architecture`` (weights freshly initialized)."""
    from trainables.models.lm import ByteLM
    from trainables.models.lm_config import ByteLMConfig
    from trainables.models.vision import MLP, ConvNet, ConvNetConfig, MLPConfig

    if architecture.arch == "byte_lm":
        return ByteLM(ByteLMConfig.from_dict(architecture.config))
    if architecture.arch == "bit_lm":
        from trainables.models.bit_lm import BitLM
        from trainables.models.bit_lm_config import BitLMConfig

        return BitLM(BitLMConfig.from_dict(architecture.config))
    if architecture.arch == "conv":
        return ConvNet(ConvNetConfig(**architecture.config))
    if architecture.arch == "mlp":
        return MLP(MLPConfig(**architecture.config))
    raise ValueError(f"unknown model.arch {architecture.arch!r}; valid: byte_lm, bit_lm, conv, mlp")


def quant_options(cfg: RunConfig) -> dict[str, Any]:
    """The configured scheme's options: the ``quant`` section is that scheme's own options type
    (``trainables.quant_config``), so every key it holds reaches the layers."""
    return cfg.quant.option_values()


def quantize(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """Apply the configured quantization scheme to ``model`` (in place)."""
    return prepare(model, cfg.quant.scheme, keep_head=cfg.quant.keep_head, **quant_options(cfg))


def build_model(cfg: RunConfig, architecture: Architecture) -> nn.Module:
    """The quantized model of ``architecture`` as the run config quantizes it."""
    if architecture.arch == "hf_causal_lm":  # loaded and converted by convert_hf_model
        from trainables.models.hf_lm import build_hf_lm

        return build_hf_lm(architecture.config, cfg.quant.scheme, keep_head=cfg.quant.keep_head,
                           **quant_options(cfg))  # fmt: skip
    return quantize(build_float_model(architecture), cfg)


def architecture_of(model: nn.Module, arch: str) -> Architecture:
    """The architecture a (possibly grown) model has now, read from its ``config`` attribute."""
    config = model.config
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
    return Architecture(arch, dict(as_dict))
