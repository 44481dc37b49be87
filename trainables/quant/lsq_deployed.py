"""Deployed LSQ layers: integer codes times the learned step, for inference (arXiv 1902.08153);
converted from a trained :class:`~.lsq.LSQLinear` / :class:`~.lsq.LSQConv2d` by ``to_deployed``.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .lsq_functional import MIN_STEP, lsq_quantize_values


class _DeployedLSQ(nn.Module):
    """Inference form of an LSQ layer: integer weight codes, weight step, frozen input grid."""

    def __init__(
        self,
        codes: Tensor,
        step: Tensor,
        bias: Tensor | None,
        act: tuple[Tensor, int, int] | None,
    ) -> None:
        super().__init__()
        self.register_buffer("codes", codes.contiguous())  # int8 weight codes, weight's shape
        self.register_buffer("step", step.detach().float().reshape(()))  # []
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.act_range: tuple[int, int] | None = None
        act_step = None
        if act is not None:
            act_step, self.act_range = act[0].detach().float().reshape(()), (act[1], act[2])
        self.register_buffer("act_step", act_step)

    def _operands(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        if self.act_range is not None:
            x = lsq_quantize_values(x, self.act_step, *self.act_range)
        weight = (self.codes.float() * self.step.clamp_min(MIN_STEP)).to(x.dtype)
        return x, weight, None if self.bias is None else self.bias.to(x.dtype)


class DeployedLSQLinear(_DeployedLSQ):
    """Deployed :class:`LSQLinear`: equals the fake-quantized layer in evaluation at lam = 1."""

    def forward(self, x: Tensor) -> Tensor:  # x: [..., in] -> [..., out]
        return F.linear(*self._operands(x))


class DeployedLSQConv2d(_DeployedLSQ):
    """Deployed :class:`LSQConv2d`: equals the fake-quantized layer in evaluation at lam = 1."""

    def __init__(self, *, conv: nn.Conv2d, **parts: Any) -> None:
        super().__init__(**parts)
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        self.padding, self.padding_mode = conv.padding, conv.padding_mode
        self.pre_padding = conv._reversed_padding_repeated_twice  # for non-zero padding modes

    def forward(self, x: Tensor) -> Tensor:  # x: [B, C_in, H, W] -> [B, C_out, H', W']
        x, weight, bias = self._operands(x)
        padding = self.padding
        if self.padding_mode != "zeros":  # as nn.Conv2d does: pad first, then no conv padding
            x, padding = F.pad(x, self.pre_padding, mode=self.padding_mode), 0
        return F.conv2d(x, weight, bias, self.stride, padding, self.dilation, self.groups)
