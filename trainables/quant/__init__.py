"""The quantized-model core: pure single-device PyTorch (no Ray, MLflow or torch.distributed).

Config, quantizer, layer and swap pass are kept apart; a scheme is a module registered by name.
"""

from . import schemes as _schemes  # noqa: F401  (registers the built-in schemes)
from .base import QuantLayer
from .bitlinear import BitLinear, HBitLinear, TernaryLinear
from .checkpoint import (
    CheckpointError,
    PackedCheckpoint,
    load_packed_checkpoint,
    load_packed_into,
    save_packed_checkpoint,
)
from .hadamard import fwht, hadamard_block_size, hadamard_matrix, hadamard_transform
from .losses import quantization_mse
from .packing import CODES_PER_BYTE, pack_ternary, packed_length, unpack_ternary
from .quantizers import activation_quantize, blend, ste, ternary_dequantize, ternary_quantize
from .registry import LayerContext, Scheme, available_schemes, get_scheme, register_scheme
from .schedule import (
    SCHEDULE_KINDS,
    LambdaSchedule,
    apply_lambda_schedule,
    quant_layers,
    set_quant_lambda,
)
from .swap import QuantRecipe, apply_recipe, convert, dequantize, prepare, quant_recipe

__all__ = [
    "CODES_PER_BYTE",
    "SCHEDULE_KINDS",
    "BitLinear",
    "CheckpointError",
    "HBitLinear",
    "LambdaSchedule",
    "LayerContext",
    "PackedCheckpoint",
    "QuantLayer",
    "QuantRecipe",
    "Scheme",
    "TernaryLinear",
    "activation_quantize",
    "apply_lambda_schedule",
    "apply_recipe",
    "available_schemes",
    "blend",
    "convert",
    "dequantize",
    "fwht",
    "get_scheme",
    "hadamard_block_size",
    "hadamard_matrix",
    "hadamard_transform",
    "load_packed_checkpoint",
    "load_packed_into",
    "pack_ternary",
    "packed_length",
    "prepare",
    "quant_layers",
    "quant_recipe",
    "quantization_mse",
    "register_scheme",
    "save_packed_checkpoint",
    "set_quant_lambda",
    "ste",
    "ternary_dequantize",
    "ternary_quantize",
    "unpack_ternary",
]
