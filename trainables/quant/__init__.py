"""The quantized-model core: pure single-device PyTorch (no Ray, MLflow or torch.distributed).

Config, quantizer, layer and swap pass are kept apart; a scheme is a module registered by name.
"""

from . import schemes as _schemes  # noqa: F401  (registers the built-in schemes)
from .adaptive import AdaptiveBitLinear, DeployedAdaptiveLinear, absmax_fake_quantize
from .base import QuantLayer
from .bin_reg import (
    ActivationCapture,
    BinRegConfig,
    activation_bin_regularization,
    bin_reg_loss,
    bin_reg_terms,
    bin_regularization,
    br_active,
    br_warmup_steps,
    render_br_banner,
    weight_bin_regularization,
)
from .bit_usage import (
    BitBalancedCrossEntropy,
    collect_bit_usage,
    compute_total_bit_usage,
    count_trainable_parameters,
)
from .bitlinear import BitLinear, HBitLinear, PackedTernaryLinear, TernaryLinear, configure_ternary
from .checkpoint import (
    CheckpointError,
    PackedCheckpoint,
    load_packed_checkpoint,
    load_packed_into,
    save_packed_checkpoint,
)
from .hadamard import (
    fwht,
    hadamard_block_size,
    hadamard_factors,
    hadamard_matrix,
    hadamard_transform,
)
from .losses import quantization_mse, record_quant_errors
from .lsq import (
    DeployedLSQConv2d,
    DeployedLSQLinear,
    LSQConv2d,
    LSQLayer,
    LSQLinear,
    LSQQuantizer,
    lsq_grad_scale,
    lsq_init_step,
    lsq_quantize,
    lsq_range,
)
from .packing import CODES_PER_BYTE, pack_ternary, packed_length, unpack_ternary
from .quantizers import (
    activation_codes,
    activation_quantize,
    blend,
    blend_activation,
    blend_ternary,
    ste,
    ternary_dequantize,
    ternary_quantize,
    ternary_ste,
)
from .registry import LayerContext, Scheme, available_schemes, get_scheme, register_scheme
from .schedule import (
    SCHEDULE_KINDS,
    LambdaSchedule,
    apply_lambda_schedule,
    quant_layers,
    set_quant_lambda,
)
from .step_size import (
    alpha_frozen,
    freeze_alpha,
    initialize_step_sizes,
    step_size_parameters,
    unfreeze_alpha,
)
from .swap import QuantRecipe, apply_recipe, convert, dequantize, prepare, quant_recipe

__all__ = [
    "CODES_PER_BYTE",
    "SCHEDULE_KINDS",
    "ActivationCapture",
    "AdaptiveBitLinear",
    "BinRegConfig",
    "BitBalancedCrossEntropy",
    "BitLinear",
    "CheckpointError",
    "DeployedAdaptiveLinear",
    "DeployedLSQConv2d",
    "DeployedLSQLinear",
    "HBitLinear",
    "LSQConv2d",
    "LSQLayer",
    "LSQLinear",
    "LSQQuantizer",
    "LambdaSchedule",
    "LayerContext",
    "PackedCheckpoint",
    "PackedTernaryLinear",
    "QuantLayer",
    "QuantRecipe",
    "Scheme",
    "TernaryLinear",
    "absmax_fake_quantize",
    "activation_bin_regularization",
    "activation_codes",
    "activation_quantize",
    "alpha_frozen",
    "apply_lambda_schedule",
    "apply_recipe",
    "available_schemes",
    "bin_reg_loss",
    "bin_reg_terms",
    "bin_regularization",
    "blend",
    "blend_activation",
    "blend_ternary",
    "br_active",
    "br_warmup_steps",
    "collect_bit_usage",
    "compute_total_bit_usage",
    "configure_ternary",
    "convert",
    "count_trainable_parameters",
    "dequantize",
    "freeze_alpha",
    "fwht",
    "get_scheme",
    "hadamard_block_size",
    "hadamard_factors",
    "hadamard_matrix",
    "hadamard_transform",
    "initialize_step_sizes",
    "load_packed_checkpoint",
    "load_packed_into",
    "lsq_grad_scale",
    "lsq_init_step",
    "lsq_quantize",
    "lsq_range",
    "pack_ternary",
    "packed_length",
    "prepare",
    "quant_layers",
    "quant_recipe",
    "quantization_mse",
    "record_quant_errors",
    "register_scheme",
    "render_br_banner",
    "save_packed_checkpoint",
    "set_quant_lambda",
    "ste",
    "step_size_parameters",
    "ternary_dequantize",
    "ternary_quantize",
    "ternary_ste",
    "unfreeze_alpha",
    "unpack_ternary",
    "weight_bin_regularization",
]
