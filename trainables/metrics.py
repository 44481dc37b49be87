"""Model-size metrics of the metrics contract: params, stored bits, packed bytes."""

from __future__ import annotations

import math

from torch import nn

from trainables import metric_names as names


def model_size(model: nn.Module) -> dict[str, float]:
    """``model/params``, ``model/bits_total``, ``model/bits_per_weight``, ``model/packed_bytes``,
    ``model/quant_bits_per_weight``.

    A quantized layer that knows its storage cost (``storage_bits()``: packed codes plus scales)
    counts that for its weight; every other parameter counts at its own precision (32 bits for
    float32). ``bits_total`` is therefore what a packed checkpoint of the model stores, and
    ``bits_per_weight`` the whole model's average (full-precision embedding and head included);
    ``quant_bits_per_weight`` is the quantized layers' weights alone (0 when there are none).
    """
    params = 0
    bits = 0.0
    quant_bits = 0.0
    quant_weights = 0
    counted: set[int] = set()
    for module in model.modules():
        storage_bits = getattr(module, "storage_bits", None)
        weight = getattr(module, "weight", None)
        if callable(storage_bits) and isinstance(weight, nn.Parameter):
            value = storage_bits()
            if value is not None:
                bits += float(value)
                quant_bits += float(value)
                quant_weights += weight.numel()
                counted.add(id(weight))
    for parameter in model.parameters():
        params += parameter.numel()
        if id(parameter) not in counted:
            bits += 8 * parameter.element_size() * parameter.numel()
    return {
        names.MODEL_PARAMS: float(params),
        names.MODEL_BITS_TOTAL: bits,
        names.MODEL_BITS_PER_WEIGHT: bits / params if params else 0.0,
        names.MODEL_PACKED_BYTES: float(math.ceil(bits / 8)),
        names.MODEL_QUANT_BITS_PER_WEIGHT: quant_bits / quant_weights if quant_weights else 0.0,
    }


def layer_bit_widths(model: nn.Module) -> dict[str, float]:
    """``bits/<layer>``: the rounded bit-width of every layer with a learnable one (seed 000)."""
    widths: dict[str, float] = {}
    for name, module in model.named_modules():
        rounded = getattr(module, "rounded_bits", None)
        if callable(rounded):
            widths[names.bits_name(name)] = float(rounded().detach())
    return widths
