"""Packed ternary checkpoints: packed codes, scales, the full-precision rest, and a JSON manifest.

A checkpoint is a directory with ``model.safetensors`` (safe deserialization: no pickle) and
``manifest.json``: the fields of seed 003's ``training_manifest.json`` (base_model, training_steps,
lambda_warmup_frac, final_lambda, compression_ready, model_type), the packing scheme, the measured
bits per weight, every ternary layer's shape and the SHA-256 of the tensor file, which the reader
checks so that a truncated or tampered file is refused, never decoded into garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import UserInputError
from .bitlinear import BitLinear
from .packing import pack_ternary, unpack_ternary
from .quantizers import ternary_quantize
from .ternary_linear import TernaryLinear

FORMAT = "bitsweep-packed-ternary"
FORMAT_VERSION = 1
TENSORS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"


class CheckpointError(UserInputError, ValueError):
    """A packed checkpoint that is missing, truncated, tampered with or of another format."""


@dataclass
class PackedCheckpoint:
    """A packed checkpoint read back: its manifest and the deployed model's state dict."""

    manifest: dict[str, Any]
    state_dict: dict[str, Tensor]


def _ternary_layers(model: nn.Module) -> dict[str, tuple[Tensor, Tensor, nn.Module]]:
    """name -> (int8 codes, scale, layer) for every ternary layer, trained or deployed."""
    layers: dict[str, tuple[Tensor, Tensor, nn.Module]] = {}
    for name, module in model.named_modules():
        if isinstance(module, TernaryLinear):
            layers[name] = (module.codes, module.scale, module)
        elif isinstance(module, BitLinear):
            codes, scale = ternary_quantize(module.weight.detach(), module.eps)
            layers[name] = (codes, scale, module)
    return layers


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_packed_checkpoint(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    packing: str = "base3",
    manifest: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (prepared with a ternary scheme, or converted) as a packed checkpoint.

    Args:
        model: its BitLinear / HBitLinear / TernaryLinear layers are stored as packed codes and a
            scale; every other tensor of its state dict in full precision.
        directory: created (parents too); replaced atomically if it exists.
        packing: ``"2bit"`` or ``"base3"``.
        manifest: extra manifest fields (seed 003's training_steps, lambda_warmup_frac, ...).

    Returns:
        The checkpoint directory.
    """
    target = Path(directory)
    layers = _ternary_layers(model)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors: dict[str, Tensor] = {}
    layer_info: dict[str, dict[str, Any]] = {}
    packed_bytes = scale_bytes = weights = 0
    for name, (codes, scale, module) in layers.items():
        prefix = f"{name}." if name else ""
        state.pop(f"{prefix}weight", None)
        state.pop(f"{prefix}codes", None)
        state.pop(f"{prefix}scale", None)
        packed = pack_ternary(codes, packing)
        tensors[f"{prefix}codes_packed"] = packed
        tensors[f"{prefix}scale"] = scale.detach().float().reshape(())
        packed_bytes += packed.numel()
        scale_bytes += 4
        weights += codes.numel()
        layer_info[name] = {
            "shape": list(codes.shape),
            "packed_bytes": packed.numel(),
            "act_bits": module.act_bits,
            "hadamard_block": getattr(
                module, "block_size", getattr(module, "hadamard_block", None)
            ),
        }
    for key, value in state.items():
        tensors[key] = value.contiguous().cpu()
    bits_per_weight = (8 * (packed_bytes + scale_bytes) / weights) if weights else None
    fields: dict[str, Any] = {
        "base_model": None,
        "training_steps": None,
        "lambda_warmup_frac": None,
        "final_lambda": 1.0,
        "compression_ready": True,
        "model_type": "bitnet158",
    }
    fields.update(manifest or {})
    fields.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "packing": packing,
            "ternary_layers": layer_info,
            "ternary_weights": weights,
            "packed_bytes": packed_bytes,
            "bits_per_weight": bits_per_weight,
        }
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(tensors, str(staging / TENSORS_FILE))
        fields["sha256"] = _sha256(staging / TENSORS_FILE)
        (staging / MANIFEST_FILE).write_text(json.dumps(fields, indent=2, sort_keys=True))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_packed_checkpoint(directory: str | os.PathLike[str]) -> PackedCheckpoint:
    """Read and verify a packed checkpoint, unpacking the codes into the deployed state dict.

    The state dict has ``<layer>.codes`` (int8) and ``<layer>.scale`` for every ternary layer, as
    a model after ``convert`` holds them. Raises FileNotFoundError for a missing directory or file
    and CheckpointError for anything corrupt, truncated or tampered with.
    """
    root = Path(directory)
    manifest_path, tensors_path = root / MANIFEST_FILE, root / TENSORS_FILE
    for path in (root, manifest_path, tensors_path):
        if not path.exists():
            raise FileNotFoundError(f"packed checkpoint: {path} does not exist")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{manifest_path} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{manifest_path} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{manifest_path}: format_version {manifest.get('format_version')!r} is not supported "
            f"(this bitsweep reads version {FORMAT_VERSION})"
        )
    if _sha256(tensors_path) != manifest.get("sha256"):
        raise CheckpointError(
            f"{tensors_path} does not match the SHA-256 in its manifest: truncated or modified"
        )
    try:
        tensors = load_file(str(tensors_path))
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{tensors_path} cannot be read: {err}") from None
    state: dict[str, Tensor] = {}
    layers = manifest.get("ternary_layers", {})
    packing = manifest.get("packing", "")
    for name, info in layers.items():
        prefix = f"{name}." if name else ""
        try:
            packed = tensors.pop(f"{prefix}codes_packed")
            state[f"{prefix}scale"] = tensors.pop(f"{prefix}scale")
            state[f"{prefix}codes"] = unpack_ternary(packed, info["shape"], packing)
        except (KeyError, ValueError) as err:
            raise CheckpointError(
                f"{tensors_path}: ternary layer {name!r} is corrupt: {err}"
            ) from None
    state.update(tensors)
    return PackedCheckpoint(manifest=manifest, state_dict=state)


def load_packed_into(model: nn.Module, directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a packed checkpoint into a converted model of the same architecture.

    Returns the checkpoint's manifest.
    """
    checkpoint = load_packed_checkpoint(directory)
    with torch.no_grad():
        model.load_state_dict(checkpoint.state_dict, strict=True)
    return checkpoint.manifest
