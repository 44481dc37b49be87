"""Learned step size quantization (LSQ, Esser et al., ICLR 2020) for weights and activations.

Formulas (Esser et al., "Learned Step Size Quantization", ICLR 2020, Eq. 1-5):

* ``v_q = round(clip(v / s, -Q_N, Q_P)) * s`` with a learnable step ``s``;
* signed b-bit: ``Q_N = 2^(b-1)``, ``Q_P = 2^(b-1) - 1``; unsigned (after ReLU): ``Q_N = 0``,
  ``Q_P = 2^b - 1``;
* gradient with respect to ``s``: ``-Q_N`` where ``v/s <= -Q_N``, ``Q_P`` where ``v/s >= Q_P`` and
  ``round(v/s) - v/s`` in between, scaled by ``g = 1 / sqrt(N * Q_P)`` (``N`` = number of weights,
  or features per example for activations); gradient with respect to ``v``: 1 inside the range, 0
  outside (straight-through estimator for the rounding);
* initialization ``s = 2 * mean(|v|) / sqrt(Q_P)`` (weights from themselves, activations from the
  first batch they quantize).

Gradual quantization: with blend ``lam`` a layer computes ``v + lam * (q(v) - v)``, the value of the
``QuantLayer`` blend, but without detaching ``q(v)`` so that the step size keeps learning (its
gradient is ``lam`` times LSQ's); ``lam = 0`` is exactly full precision and never touches ``s``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import QuantLayer
from .bounds import MAX_BITS, MIN_BITS, Signedness, check_bits  # noqa: F401  (re-exported)
from .lsq_functional import (  # noqa: F401  (re-exported: lsq's names before the split)
    MIN_STEP,
    ZERO_TENSOR_STEP,
    _LSQFunction,
    lsq_grad_scale,
    lsq_init_step,
    lsq_quantize,
    lsq_quantize_values,
    lsq_range,
)

if TYPE_CHECKING:
    from .lsq_deployed import DeployedLSQConv2d, DeployedLSQLinear

QuantizerKind = Literal["weight", "activation"]


class LSQQuantizer(nn.Module):
    """One learnable LSQ step size and the rule that quantizes a tensor with it.

    Args:
        bits: 2..8.
        signed: True (weights, signed activations), False (after ReLU) or ``"auto"``: unsigned if
            the first batch it quantizes has no negative value.
        kind: ``"weight"`` (``g`` uses the tensor's size) or ``"activation"`` (``g`` uses the
            features per example, i.e. ``numel / batch``).

    The step (``step``, LSQ's ``s``, the "alpha" of seed 002) is initialized lazily, at the first
    forward that quantizes, from that tensor. The ``initialized`` and ``signed_flag`` buffers record
    it so that the state survives ``state_dict`` round trips and checkpoints.
    """

    def __init__(
        self,
        bits: int,
        *,
        signed: Signedness = True,
        kind: QuantizerKind = "weight",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        if signed not in (True, False, "auto"):
            raise ValueError(f"act_signed must be True, False or 'auto', got {signed!r}")
        if kind not in ("weight", "activation"):
            raise ValueError(f"kind must be 'weight' or 'activation', got {kind!r}")
        self.signed_mode: Signedness = signed
        self.kind: QuantizerKind = kind
        self.step = nn.Parameter(torch.ones((), device=device))  # [] fp32
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool, device=device))
        self.register_buffer("signed_flag", torch.tensor(signed is not False, device=device))
        # not read from the buffers, which may live on the meta device
        self._ready = False
        self._signed: bool | None = None if signed == "auto" else bool(signed)

    def _sync_from_buffers(self) -> None:
        # Python copies of the buffers, so forward never synchronizes a device to read them
        self._ready = bool(self.initialized)
        self._signed = bool(self.signed_flag) if self._ready or self.signed_mode != "auto" else None

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._sync_from_buffers()

    @property
    def is_initialized(self) -> bool:
        """Whether the step size has been initialized (or loaded)."""
        return self._ready

    @property
    def q_range(self) -> tuple[int, int]:
        """``(Q_N, Q_P)``; for ``signed="auto"`` only known once initialized."""
        if self._signed is None:
            raise RuntimeError("LSQ activation signedness is 'auto' and not decided yet")
        return lsq_range(self.bits, self._signed)

    def initialize(self, v: Tensor) -> None:
        """Set the step to ``2 * mean(|v|) / sqrt(Q_P)`` (and decide an ``"auto"`` signedness)."""
        with torch.no_grad():
            if self.signed_mode == "auto":
                self._signed = bool((v < 0).any())
            self.signed_flag.fill_(bool(self._signed))
            self.step.fill_(lsq_init_step(v, self.q_range[1]))
            self.initialized.fill_(True)
        self._ready = True

    def grad_scale(self, v: Tensor) -> float:
        """``g = 1/sqrt(N * Q_P)``: N = ``v.numel()`` for weights, features per example else."""
        n = v.numel()
        if self.kind == "activation" and v.dim() > 1:
            n //= max(v.shape[0], 1)
        return lsq_grad_scale(n, self.q_range[1])

    def forward(self, v: Tensor, lam: float = 1.0) -> Tensor:
        """``v + lam * (q(v) - v)`` with LSQ's ``q``; ``lam = 0`` returns ``v`` untouched."""
        if lam == 0.0:
            return v
        if not self._ready:
            self.initialize(v)
        q_n, q_p = self.q_range
        v_q = lsq_quantize(v, self.step, q_n, q_p, self.grad_scale(v))
        return v_q if lam == 1.0 else v + lam * (v_q - v)

    def quantize_values(self, v: Tensor) -> Tensor:
        """The quantized values of ``v`` (no gradient); the step must be initialized."""
        if not self._ready:
            raise RuntimeError("LSQ step size not initialized: run a forward pass first")
        return lsq_quantize_values(v, self.step, *self.q_range)

    def codes(self, v: Tensor) -> Tensor:
        """Integer codes ``round(clip(v/s, -Q_N, Q_P))`` (int8, or int16 for 8-bit unsigned)."""
        if not self._ready:
            self.initialize(v)
        q_n, q_p = self.q_range
        s = self.step.detach().clamp_min(MIN_STEP)
        dtype = torch.int8 if q_p <= 127 else torch.int16
        return torch.clamp(v.detach() / s, -q_n, q_p).round().to(dtype)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed_mode}, kind={self.kind}"


class LSQLayer(QuantLayer):
    """What LSQLinear and LSQConv2d share: their two quantizers and the conversions."""

    scheme_name = "lsq"
    weight: nn.Parameter
    bias: nn.Parameter | None

    def _init_quantizers(
        self, weight_bits: int, act_bits: int | None, act_signed: Signedness
    ) -> None:
        check_bits(weight_bits, "weight_bits")
        if act_bits is not None:
            check_bits(act_bits, "act_bits")
        self.weight_bits, self.act_bits, self.act_signed = weight_bits, act_bits, act_signed
        device = self.weight.device
        self.weight_quantizer = LSQQuantizer(weight_bits, signed=True, device=device)
        self.act_quantizer = (
            None
            if act_bits is None
            else LSQQuantizer(act_bits, signed=act_signed, kind="activation", device=device)
        )
        self.quant_lambda = 1.0
        self.eval_lambda = 1.0

    def _quantized_operands(self, x: Tensor, lam: float) -> tuple[Tensor, Tensor]:
        if self.record_quant_error:  # see losses.record_quant_errors (FSDP2: weights whole here)
            self.recorded_quant_error = self.quantization_error()
        if self.act_quantizer is not None:
            x = self.act_quantizer(x, lam)
        return x, self.weight_quantizer(self.weight, lam)

    def quantization_error(self) -> Tensor:
        """``mean((W - W_q)^2)`` with gradient to ``W`` and to the weight step size."""
        w_q = self.weight_quantizer(self.weight, 1.0)
        return (self.weight - w_q).pow(2).mean()

    def storage_bits(self) -> int:
        """Bits a deployed weight needs: ``weight_bits`` per code plus the fp32 step size."""
        return self.weight_bits * self.weight.numel() + 32

    def _deployed_parts(self) -> dict[str, Any]:
        if self.act_quantizer is not None and not self.act_quantizer.is_initialized:
            raise RuntimeError(
                "the activation step size is not initialized: run at least one batch through "
                "the model (with lam > 0) before convert()"
            )
        codes = self.weight_quantizer.codes(self.weight)
        act = None
        if self.act_quantizer is not None:
            act = (self.act_quantizer.step.detach().clone(), *self.act_quantizer.q_range)
        bias = None if self.bias is None else self.bias.detach().clone()
        step = self.weight_quantizer.step.detach().clone()
        return {"codes": codes, "step": step, "bias": bias, "act": act}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, weight_bits={self.weight_bits}, act_bits={self.act_bits}, "
            f"lam={self.quant_lambda:g}"
        )


class LSQLinear(LSQLayer, nn.Linear):
    """``nn.Linear`` with LSQ weights (signed) and LSQ input activations, blended by lam.

    Args:
        weight_bits: 2..8.
        act_bits: 2..8, or None to keep the input in full precision.
        act_signed: signedness of the input grid: True, False (after ReLU) or ``"auto"`` (decided
            from the first batch: unsigned if it has no negative value).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        weight_bits: int = 4,
        act_bits: int | None = 4,
        act_signed: Signedness = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_quantizers(weight_bits, act_bits, act_signed)

    def forward(self, x: Tensor) -> Tensor:  # x: [..., in] -> [..., out]
        lam = self.effective_lambda()
        if lam == 0.0:
            return F.linear(x, self.weight, self.bias)
        x, w = self._quantized_operands(x, lam)
        return F.linear(x, w, self.bias)

    def to_float(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the latent weights (what this layer computes at lam = 0)."""
        w = self.weight
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        linear.load_state_dict({k: v for k, v in self.state_dict().items() if "." not in k})
        return linear

    to_linear = to_float

    def to_deployed(self) -> DeployedLSQLinear:
        from .lsq_deployed import DeployedLSQLinear

        """Integer weight codes and step sizes computing the fake-quantized evaluation output."""
        return DeployedLSQLinear(**self._deployed_parts())


class LSQConv2d(LSQLayer, nn.Conv2d):
    """``nn.Conv2d`` with LSQ weights and LSQ input activations (see :class:`LSQLinear`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        weight_bits: int = 4,
        act_bits: int | None = 4,
        act_signed: Signedness = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self._init_quantizers(weight_bits, act_bits, act_signed)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options: Any) -> LSQConv2d:
        """A layer of this class holding ``conv``'s configuration, weights and bias (copied)."""
        w = conv.weight
        layer = cls(**_conv_config(conv), device=w.device, dtype=w.dtype, **options)
        layer.load_state_dict(conv.state_dict(), strict=False)
        layer.train(conv.training)
        return layer

    def forward(self, x: Tensor) -> Tensor:  # x: [B, C_in, H, W] -> [B, C_out, H', W']
        lam = self.effective_lambda()
        if lam == 0.0:
            return self._conv_forward(x, self.weight, self.bias)
        x, w = self._quantized_operands(x, lam)
        return self._conv_forward(x, w, self.bias)

    def to_float(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the latent weights (what this layer computes at lam = 0)."""
        w = self.weight
        conv = nn.Conv2d(**_conv_config(self), device=w.device, dtype=w.dtype)
        conv.load_state_dict({k: v for k, v in self.state_dict().items() if "." not in k})
        return conv

    def to_deployed(self) -> DeployedLSQConv2d:
        from .lsq_deployed import DeployedLSQConv2d

        """Integer weight codes and step sizes computing the fake-quantized evaluation output."""
        return DeployedLSQConv2d(**self._deployed_parts(), conv=self)


def _conv_config(conv: nn.Conv2d) -> dict[str, Any]:
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "groups": conv.groups,
        "bias": conv.bias is not None,
        "padding_mode": conv.padding_mode,
    }
