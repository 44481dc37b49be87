"""What every quantized layer shares: the blend factor, the evaluation rule and the conversions."""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .quantizers import check_lambda

_Layer = TypeVar("_Layer", bound="QuantLayer")


class QuantLayer(nn.Module):
    """Mixin marking a layer as quantized by a bitsweep scheme.

    ``quant_lambda`` is the gradual-quantization blend used in training (0 = full precision,
    1 = fully quantized). In evaluation the layer uses ``eval_lambda`` (1.0 by default, as in
    "evaluation always at lam = 1"); set ``eval_lambda = None`` to evaluate at ``quant_lambda``.
    """

    scheme_name: str = "base"
    quant_lambda: float = 1.0
    eval_lambda: float | None = 1.0
    # When True, forward records the weight quantization error (with autograd) in
    # ``recorded_quant_error``: under FSDP2 the weights are only whole inside forward.
    record_quant_error: bool = False
    recorded_quant_error: Tensor | None = None

    @classmethod
    def from_linear(cls: type[_Layer], linear: nn.Linear, **options: Any) -> _Layer:
        """A layer of this class holding ``linear``'s weights (copied, in storage form) and bias."""
        w = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=w.device,
            dtype=w.dtype,
            **options,
        )
        with torch.no_grad():
            layer.weight.copy_(layer._weight_to_storage(w.detach()))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
        layer.train(linear.training)
        return layer

    def _weight_to_storage(self, w: Tensor) -> Tensor:
        """How a full-precision weight is stored (H-BitLinear stores it Hadamard-transformed)."""
        return w

    def set_quant_lambda(self, lam: float) -> None:
        """Set the training blend factor, validated to lie in [0, 1]."""
        self.quant_lambda = check_lambda(lam)

    def effective_lambda(self) -> float:
        """The blend factor this forward pass uses (training or evaluation rule)."""
        if self.training or self.eval_lambda is None:
            return self.quant_lambda
        return self.eval_lambda

    def quantization_error(self) -> Tensor | None:
        """Mean squared error between the latent weights and their quantized value, or None."""
        return None

    def to_float(self) -> nn.Module:
        """The full-precision module holding this layer's latent weights."""
        raise NotImplementedError

    def to_deployed(self) -> nn.Module:
        """The frozen inference form; by default the layer itself in eval mode at lam = 1."""
        self.eval()
        self.eval_lambda = 1.0
        return self
