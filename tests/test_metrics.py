"""Model-size metrics: the whole model's bits per weight and the quantized layers' apart."""

from __future__ import annotations

from torch import nn

from trainables.metrics import model_size
from trainables.quant.lsq import LSQLinear


def test_quantized_layers_bits_per_weight_leave_out_the_full_precision_parts() -> None:
    # a 2-bit layer between a full-precision "embedding" and "head", as in a ternary LM
    model = nn.Sequential(nn.Linear(64, 64), LSQLinear(64, 64, weight_bits=2), nn.Linear(64, 64))
    size = model_size(model)
    quant = model[1]
    assert size["model/quant_bits_per_weight"] == quant.storage_bits() / quant.weight.numel()
    assert 2.0 <= size["model/quant_bits_per_weight"] < 2.1  # codes plus one fp32 step
    assert size["model/bits_per_weight"] > 20  # the fp32 layers dominate the whole model
    assert model_size(nn.Sequential(nn.Linear(4, 4)))["model/quant_bits_per_weight"] == 0.0
