"""Single-device model code: byte-level language models, vision networks, early exit, growth."""

from .bit_lm import MASK_TOKEN, BitLM, bit_cross_entropy, sinusoidal_positions
from .bit_lm_config import BitLMConfig
from .early_exit import (
    ExitGate,
    FloatLinear,
    bernoulli_ste,
    exit_curriculum_mask,
    exit_distribution,
    exit_loss_weights,
    expected_exit,
    layer_dropout_rates,
    realized_exit,
    routed_task_loss,
    routing_loss,
)
from .growth import grow_context, grow_depth, grow_width
from .growth_optim import growth_lr, growth_warmup, move_optimizer_to_grown, warmup_factor
from .hf_convert import HFCausalLMAdapter, convert_hf_model, insert_post_attn_norms, load_hf_model
from .lm import ByteLM, bits_per_byte
from .lm_config import ByteLMConfig
from .outputs import ModelOutput
from .vision import MLP, ConvNet, ConvNetConfig, MLPConfig, accuracy, build_vision_model

__all__ = [
    "MASK_TOKEN",
    "MLP",
    "BitLM",
    "BitLMConfig",
    "ByteLM",
    "ByteLMConfig",
    "ConvNet",
    "ConvNetConfig",
    "ExitGate",
    "FloatLinear",
    "HFCausalLMAdapter",
    "MLPConfig",
    "ModelOutput",
    "accuracy",
    "bernoulli_ste",
    "bit_cross_entropy",
    "bits_per_byte",
    "build_vision_model",
    "convert_hf_model",
    "exit_curriculum_mask",
    "exit_distribution",
    "exit_loss_weights",
    "expected_exit",
    "grow_context",
    "grow_depth",
    "grow_width",
    "growth_lr",
    "growth_warmup",
    "insert_post_attn_norms",
    "layer_dropout_rates",
    "load_hf_model",
    "move_optimizer_to_grown",
    "realized_exit",
    "routed_task_loss",
    "routing_loss",
    "sinusoidal_positions",
    "warmup_factor",
]
