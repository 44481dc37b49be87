"""Quantization-aware loss terms that look at the whole model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .schedule import quant_layers


def quantization_mse(model: nn.Module, *, recorded: bool = False) -> Tensor:
    """The ``lambda_q`` term of BitSkip (arXiv 2510.23766): ``||W - W_q||^2`` over quantized layers.

    Each layer contributes its mean squared quantization error; the result is their mean, so the
    term does not grow with depth. Differentiable with respect to the latent weights. Returns a
    0-d zero tensor (on the model's device) when the model has no quantized weights.

    With ``recorded=True`` the errors the layers recorded in their last forward pass are used (and
    cleared) instead of being recomputed: see :func:`record_quant_errors`. Sharded (FSDP2) models
    need that form, since their weights are only whole inside forward; layers that did not run
    (skipped by early exit or layer dropout) do not contribute.
    """
    errors: list[Tensor] = []
    for layer in quant_layers(model):
        if recorded:
            error, layer.recorded_quant_error = layer.recorded_quant_error, None
        else:
            error = layer.quantization_error()
        if error is not None:
            errors.append(error)
    if not errors:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return torch.zeros((), device=device)
    return torch.stack(errors).mean()


def record_quant_errors(model: nn.Module, enabled: bool = True) -> None:
    """Make every quantized layer record its quantization error during forward (or stop)."""
    for layer in quant_layers(model):
        layer.record_quant_error = enabled
        layer.recorded_quant_error = None
