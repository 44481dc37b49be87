"""Optimizer parameter groups for learned bit-widths (seed 000).

Why a group of their own: Adam moves every parameter by about its learning rate per step whatever
the size of its gradient, so a bit-width trained at the weights' learning rate (3e-3) travels
about one bit in 600 steps whichever ``bit_loss_weight`` pushes it: every run of a sweep over the
weight ends at the same bits. With a learning rate sized for bits (``quant.bit_lr``, e.g. 0.05:
a few bits in a hundred steps) the bit-width settles where the task loss's pull up balances the
penalty's pull down, and that point moves with the weight. Weight decay would pull bit-widths
towards zero, so their group has none.
"""

from __future__ import annotations

from typing import Any

from torch import nn

BIT_WIDTH_PARAM = "bit_width"


def bit_width_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable bit-width parameters of ``model`` (``AdaptiveBitLinear.bit_width``)."""
    return [p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == BIT_WIDTH_PARAM]


def param_groups(
    model: nn.Module, *, lr: float, weight_decay: float, bit_lr: float | None
) -> list[dict[str, Any]]:
    """Optimizer groups: the trainable parameters, and the bit-widths apart at ``bit_lr``.

    Each group carries ``lr_scale`` (its learning rate over ``lr``), so a loop that schedules the
    learning rate sets ``group["lr"] = scheduled_lr * group["lr_scale"]``. ``bit_lr=None`` (or a
    model without bit-widths) gives one group: every parameter at ``lr``.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    bits = [p for p in bit_width_parameters(model) if p.requires_grad] if bit_lr else []
    ids = {id(p) for p in bits}
    groups: list[dict[str, Any]] = [
        {
            "params": [p for p in trainable if id(p) not in ids],
            "lr": lr,
            "weight_decay": weight_decay,
            "lr_scale": 1.0,
        }
    ]
    if bits:
        assert bit_lr is not None
        groups.append({"params": bits, "lr": bit_lr, "weight_decay": 0.0, "lr_scale": bit_lr / lr})
    return groups
