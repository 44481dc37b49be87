"""Quantization-aware loss terms that look at the whole model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .schedule import quant_layers


def quantization_mse(model: nn.Module) -> Tensor:
    """The ``lambda_q`` term of BitSkip (arXiv 2510.23766): ``||W - W_q||^2`` over quantized layers.

    Each layer contributes its mean squared quantization error; the result is their mean, so the
    term does not grow with depth. Differentiable with respect to the latent weights. Returns a
    0-d zero tensor (on the model's device) when the model has no quantized weights.
    """
    errors = [
        e for e in (layer.quantization_error() for layer in quant_layers(model)) if e is not None
    ]
    if not errors:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return torch.zeros((), device=device)
    return torch.stack(errors).mean()
