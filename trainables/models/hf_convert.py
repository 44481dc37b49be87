"""Convert a local Hugging Face causal LM to a bitsweep quantization scheme (seed 003).

``convert_hf_model`` swaps every ``nn.Linear`` of the model for the scheme's layer through
``trainables.quant.prepare`` (the last Linear, ``lm_head``, stays in full precision) and can insert
an RMSNorm after each attention block (``rmsnorm_post_attn``, seed 003: it stabilizes the gradual
lam = 0 -> 1 ternarization). ``transformers`` is an optional dependency
(``pip install bitsweep[hf]``); it is only imported to load a model from a directory.

An RMSNorm cannot be the identity in general (it rescales every token to a fixed RMS), so the
inserted norms are initialized to change the function as little as they can: each gain is set to the
mean per-token RMS of its attention output on calibration tokens, which keeps the average magnitude
of that branch. With ``rmsnorm_post_attn=False`` the converted model at lam = 0 computes exactly
what the original computed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..quant import prepare
from .outputs import ModelOutput

ATTENTION_ATTRS = ("self_attn", "attention", "attn")
POST_ATTN_NORM = "post_attn_norm"


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "loading a Hugging Face model needs the optional 'transformers' package: "
            "pip install bitsweep[hf]"
        ) from err
    return transformers


def load_hf_model(path: str | os.PathLike[str], **load_kwargs: Any) -> nn.Module:
    """Load a causal LM from a local directory (``AutoModelForCausalLM.from_pretrained``).

    Raises FileNotFoundError naming ``path`` when it does not exist; nothing is downloaded
    (``local_files_only=True``).
    """
    directory = Path(path)
    if not directory.exists():
        raise FileNotFoundError(f"Hugging Face model directory not found: {directory}")
    transformers = _require_transformers()
    transformers.utils.logging.disable_progress_bar()  # no per-load bars in a trial's log
    kwargs = {"local_files_only": True, **load_kwargs}
    return transformers.AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)


class _PostAttnNormHook:
    """Forward hook applying ``norm`` to an attention module's output (a tensor or a tuple).

    While ``calibrating`` it leaves the output alone and records its mean per-token RMS instead.
    A callable object (not a closure) so that ``copy.deepcopy`` of the model rebinds ``norm``.
    """

    def __init__(self, norm: nn.RMSNorm) -> None:
        self.norm = norm
        self.calibrating = False
        self.rms: list[float] = []

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        y = output[0] if isinstance(output, tuple) else output  # [B, T, D]
        if self.calibrating:
            self.rms.append(float(y.detach().float().square().mean(-1).sqrt().mean()))
            return output
        y = self.norm(y)
        return (y, *output[1:]) if isinstance(output, tuple) else y


def _attention_modules(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(parent layer, attention module) for every attention block of ``model``."""
    found = []
    for module in model.modules():
        for attr in ATTENTION_ATTRS:
            child = getattr(module, attr, None)
            if isinstance(child, nn.Module) and type(child).__name__.endswith("Attention"):
                found.append((module, child))
                break
    return found


def insert_post_attn_norms(
    model: nn.Module, calibration_ids: Tensor | None = None, *, eps: float | None = None
) -> int:
    """Add an RMSNorm (``<layer>.post_attn_norm``) after every attention block of ``model``.

    The gains are calibrated on ``calibration_ids`` ``[B, T]`` (default: 2 x 32 random tokens, seed
    0) to the mean per-token RMS of each attention output. Returns the number of norms inserted;
    raises ValueError when the model has no recognizable attention module.
    """
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None)
    eps = eps if eps is not None else getattr(config, "rms_norm_eps", 1e-6)
    pairs = _attention_modules(model)
    if not pairs or hidden is None:
        raise ValueError(
            "rmsnorm_post_attn needs a model with a config.hidden_size and attention modules named "
            f"one of {', '.join(ATTENTION_ATTRS)}; found none"
        )
    ref = next(model.parameters())
    hooks = []
    for layer, attn in pairs:
        norm = nn.RMSNorm(hidden, eps=eps, device=ref.device, dtype=ref.dtype)
        layer.add_module(POST_ATTN_NORM, norm)
        hook = _PostAttnNormHook(norm)
        attn.register_forward_hook(hook)
        hooks.append(hook)
    if calibration_ids is None:
        vocab = int(getattr(config, "vocab_size", 256))
        gen = torch.Generator().manual_seed(0)
        calibration_ids = torch.randint(0, vocab, (2, 32), generator=gen)
    for hook in hooks:
        hook.calibrating = True
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(input_ids=calibration_ids.to(ref.device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.calibrating = False
    with torch.no_grad():
        for hook in hooks:
            if hook.rms:
                hook.norm.weight.fill_(sum(hook.rms) / len(hook.rms))
            hook.rms.clear()
    return len(hooks)


def convert_hf_model(
    model_or_path: nn.Module | str | os.PathLike[str],
    scheme: str,
    rmsnorm_post_attn: bool = False,
    *,
    keep_head: bool = True,
    exclude: Sequence[str] = (),
    calibration_ids: Tensor | None = None,
    load_kwargs: Mapping[str, Any] | None = None,
    **quant_options: Any,
) -> nn.Module:
    """Quantize a Hugging Face causal LM's linear layers with ``scheme``, in place.

    Args:
        model_or_path: a loaded model, or a local directory written by ``save_pretrained``
            (FileNotFoundError naming it when missing).
        scheme: a registered quantization scheme (``"ternary"``, ``"hadamard"``, ...).
        rmsnorm_post_attn: insert a calibrated RMSNorm after every attention block (seed 003).
        keep_head: keep ``lm_head`` (the last ``nn.Linear``) in full precision.
        exclude: module names or glob patterns to keep in full precision.
        calibration_ids: tokens ``[B, T]`` calibrating the inserted norms' gains.
        load_kwargs: extra ``from_pretrained`` arguments when loading from a path.
        **quant_options: the scheme's options (for example ``act_bits=8``).

    Returns:
        The converted model; its quantized layers start at lam = 1 (use
        ``trainables.quant.set_quant_lambda`` for the gradual schedule; at lam = 0, without the
        inserted norms, the logits equal the original model's).
    """
    if isinstance(model_or_path, nn.Module):
        model = model_or_path
    else:
        model = load_hf_model(model_or_path, **dict(load_kwargs or {}))
    if rmsnorm_post_attn:
        insert_post_attn_norms(model, calibration_ids)
    return prepare(model, scheme, keep_head=keep_head, exclude=exclude, **quant_options)


class HFCausalLMAdapter(nn.Module):
    """Wraps a Hugging Face causal LM in bitsweep's ``forward(idx, targets) -> ModelOutput``.

    ``targets[b, t]`` is the token following ``idx[b, t]`` (the byte LM's convention, no shift).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> ModelOutput:
        """``idx`` ``[B, T]`` -> logits ``[B, T, V]`` and the cross-entropy with ``targets``."""
        logits = self.model(input_ids=idx).logits  # [B, T, V]
        out = ModelOutput(logits=logits)
        if targets is not None:
            flat = logits.reshape(-1, logits.shape[-1]).float()
            out.task_loss = F.cross_entropy(flat, targets.reshape(-1))
        return out
