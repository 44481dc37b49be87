"""Checks across the sections of a run config (a key valid alone, wrong with another's value).

:class:`~trainables.config.RunConfig` runs :func:`cross_section_problems` when it is built; each
problem is (dotted key, message) and the message says how to fix the input.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from trainables.quant.registry import (
    LEARNABLE_BITS,
    LEARNED_STEP_SIZES,
    TERNARY_WEIGHTS,
    schemes_with,
)

if TYPE_CHECKING:
    from trainables.config import RunConfig


def cross_section_problems(cfg: RunConfig) -> Iterable[tuple[str, str]]:
    lm = cfg.task.kind == "lm"
    if lm and cfg.model.arch not in ("byte_lm", "bit_lm", "hf_causal_lm"):
        yield (
            "model.arch",
            f"task.kind 'lm' needs arch 'byte_lm', 'bit_lm' or 'hf_causal_lm', "
            f"got {cfg.model.arch!r}",
        )
    yield from _hf_problems(cfg)
    if not lm and cfg.model.arch in ("byte_lm", "bit_lm"):
        yield "model.arch", "task.kind 'vision' needs arch 'conv' or 'mlp'"
    if not lm and cfg.data.source not in ("digits", "cifar10"):
        yield "data.source", f"vision data must be 'digits' or 'cifar10', got {cfg.data.source!r}"
    if not lm and cfg.data.source == "cifar10" and not cfg.data.path:
        yield "data.path", "cifar10 needs data.path: the folder with data_batch_1..5 and test_batch"
    routing = cfg.loss.lambda_r > 0 or cfg.loss.target_exit_layer is not None
    if routing and not (lm and cfg.model.early_exit):
        yield "loss.lambda_r", "the routing loss needs model.early_exit: true (byte LM only)"
    if cfg.loss.target_exit_layer is not None and cfg.loss.target_exit_layer > cfg.model.n_layers:
        yield "loss.target_exit_layer", f"must be <= model.n_layers={cfg.model.n_layers}"
    if cfg.loss.lambda_exit > 0 and not lm:
        yield "loss.lambda_exit", "the early-exit loss applies to the byte LM only"
    if not lm and (cfg.model.early_exit or cfg.model.layer_dropout > 0):
        yield "model.early_exit", "early exit and layer dropout apply to the byte LM only"
    step_sizes = cfg.quant.has(LEARNED_STEP_SIZES)
    if (cfg.loss.lambda_br > 0 or cfg.loss.lambda_br_act > 0) and not step_sizes:
        yield (
            "loss.lambda_br",
            f"bin regularization needs quant.scheme {_schemes_with(LEARNED_STEP_SIZES)}, "
            f"got {cfg.quant.scheme!r}",
        )
    if cfg.loss.freeze_alpha and not step_sizes:
        yield (
            "loss.freeze_alpha",
            f"freezing step sizes needs quant.scheme {_schemes_with(LEARNED_STEP_SIZES)}",
        )
    if cfg.loss.fn == "bit_balanced_ce" and not cfg.quant.has(LEARNABLE_BITS):
        yield (
            "loss.fn",
            f"bit_balanced_ce needs quant.scheme {_schemes_with(LEARNABLE_BITS)} "
            "(learnable bit-widths)",
        )
    elif cfg.loss.bit_loss_weight > 0 and cfg.loss.fn != "bit_balanced_ce":
        yield (
            "loss.bit_loss_weight",
            "the bit penalty is part of loss.fn 'bit_balanced_ce' (with quant.scheme "
            f"{_schemes_with(LEARNABLE_BITS)}): set loss.fn: bit_balanced_ce",
        )
    if cfg.export.formats and not cfg.quant.has(TERNARY_WEIGHTS):
        yield "export.formats", f"exports ternary models; quant.scheme is {cfg.quant.scheme!r}"
    if "hf-bitnet" in cfg.export.formats and cfg.model.arch != "hf_causal_lm":
        yield "export.formats", "hf-bitnet exports a converted Hugging Face model (hf_causal_lm)"
    if cfg.growth.enabled and not lm:
        yield "growth.enabled", "progressive growth applies to the byte LM only"
    yield from _bit_lm_problems(cfg)
    yield from _telemetry_problems(cfg)


def _schemes_with(capability: str) -> str:
    """``'lsq'`` or ``'a' or 'b'``: the schemes that declare ``capability``, for messages."""
    return " or ".join(map(repr, schemes_with(capability))) or "(none registered)"


def _telemetry_problems(cfg: RunConfig) -> Iterable[tuple[str, str]]:
    """Telemetry, diffusion and distillation keys (seed 004) where they do not apply."""
    bit_lm = cfg.model.arch == "bit_lm"
    for name in ("lambda_K", "lambda_C", "lambda_S"):
        if getattr(cfg.loss, name) > 0 and not bit_lm:
            yield f"loss.{name}", "telemetry regularizers need model.arch 'bit_lm'"
    from trainables.config import DiffusionConfig, DistillConfig, TelemetryConfig

    sections = (("telemetry", TelemetryConfig), ("diffusion", DiffusionConfig),
                ("distill", DistillConfig))  # fmt: skip
    for section, default in sections:
        changed = sorted(k for k, v in getattr(cfg, section) if v != getattr(default(), k))
        if changed and not bit_lm:
            keys = ", ".join(f"{section}.{k}" for k in changed)
            yield f"{section}.{changed[0]}", f"{keys} need model.arch 'bit_lm'"
        elif changed and section == "diffusion" and cfg.model.causal:
            keys = ", ".join(f"diffusion.{k}" for k in changed)
            yield f"diffusion.{changed[0]}", f"{keys} need model.causal: false (diffusion mode)"


def _bit_lm_problems(cfg: RunConfig) -> Iterable[tuple[str, str]]:
    """Keys of the bit LM (seed 004) used where they do not apply, and bad combinations."""
    m, loss = cfg.model, cfg.loss
    if m.arch != "bit_lm":
        bit_only = {"reversible": m.reversible, "act": m.act, "causal": not m.causal,
                    "attn_chunk": m.attn_chunk is not None,
                    "full_attn_logging": m.full_attn_logging,
                    "byte_phase": m.byte_phase}  # fmt: skip
        for key, used in bit_only.items():
            if used:
                yield f"model.{key}", f"applies to model.arch 'bit_lm' only, got {m.arch!r}"
        if loss.lambda_act > 0:
            yield "loss.lambda_act", "the ACT ponder cost applies to model.arch 'bit_lm' only"
        return
    if m.seq_len % 9:
        yield (
            "model.seq_len",
            f"bit_lm counts bits, 9 per byte: use a multiple of 9, e.g. 144 (got {m.seq_len})",
        )
    if m.d_model % 2:
        yield "model.d_model", f"bit_lm needs an even width (sinusoidal positions), got {m.d_model}"
    if m.act and m.reversible:
        yield (
            "model.act",
            "model.act and model.reversible cannot both be true: ACT mixes every layer's "
            "state, which the reversible stack does not keep; choose one",
        )
    if m.act and (m.early_exit or loss.lambda_r > 0 or loss.lambda_exit > 0):
        yield (
            "model.act",
            "ACT (model.act) and early exit (model.early_exit, loss.lambda_r, "
            "loss.lambda_exit) both decide the depth: use one",
        )
    if m.early_exit or m.layer_dropout > 0:
        yield (
            "model.early_exit",
            "early exit and layer dropout apply to byte_lm; bit_lm adapts its depth with model.act",
        )
    if loss.lambda_act > 0 and not m.act:
        yield "loss.lambda_act", "the ponder cost needs model.act: true"
    if m.ffn != "sqrelu" or m.subln or m.rmsnorm_post_attn:
        yield (
            "model.ffn",
            "model.ffn, model.subln and model.rmsnorm_post_attn apply to byte_lm only",
        )
    if m.reversible and (loss.lambda_q > 0 or loss.lambda_br_act > 0):
        yield (
            "model.reversible",
            "loss.lambda_q and loss.lambda_br_act read activations recorded in forward, "
            "which the reversible stack recomputes without autograd: set them to 0 or "
            "model.reversible: false",
        )
    if m.attn_chunk is not None and m.attn_chunk >= m.seq_len:
        yield "model.attn_chunk", f"must be below model.seq_len={m.seq_len} to chunk (or null)"


# no "; " in messages: ConfigError splits a cross-section message there
HF_PATH_HINT = "(pass it on the command line, e.g. bitsweep run bitnet-finetune model.hf_path=DIR)"


def _hf_problems(cfg: RunConfig) -> Iterable[tuple[str, str]]:
    """The Hugging Face fine-tuning keys (seed 003) used where they do not apply."""
    m = cfg.model
    if m.arch != "hf_causal_lm":
        if m.hf_path is not None:
            yield "model.hf_path", f"applies to model.arch 'hf_causal_lm' only, got {m.arch!r}"
        if cfg.data.source == "selfgen":
            yield (
                "data.source",
                "'selfgen' (the base model writes the training set) needs model.arch "
                "'hf_causal_lm' and model.hf_path",
            )
        return
    if cfg.task.kind != "lm":
        yield "model.arch", "'hf_causal_lm' is a language model: set task.kind 'lm'"
    if not m.hf_path:
        yield (
            "model.hf_path",
            f"model.arch 'hf_causal_lm' needs a local Hugging Face model directory {HF_PATH_HINT}",
        )
    if m.early_exit or m.layer_dropout > 0 or cfg.loss.lambda_exit > 0:
        yield "model.early_exit", "early exit and layer dropout apply to byte_lm, not hf_causal_lm"
    if cfg.growth.enabled:
        yield "growth.enabled", "progressive growth applies to byte_lm, not hf_causal_lm"
