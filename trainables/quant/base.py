"""What every quantized layer shares: the blend factor, the evaluation rule and the conversions."""

from __future__ import annotations

from torch import Tensor, nn

from .quantizers import check_lambda


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
