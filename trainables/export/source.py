"""The model an export starts from: a bitsweep packed checkpoint, read and verified.

A trial's final checkpoint holds the packed model in ``<checkpoint>/packed/`` (see
``trainables.loop._writer`` and :mod:`trainables.quant.checkpoint`); either directory is accepted.
The packed checkpoint's own reader checks the SHA-256 of the tensors, so an export never starts
from a truncated or tampered file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import UserInputError
from ..quant.checkpoint import (
    MANIFEST_FILE,
    TENSORS_FILE,
    CheckpointError,
    load_packed_checkpoint,
)

PACKED_DIR = "packed"  # the loop's sub-directory of a final checkpoint (trainables.loop.PACKED_DIR)
ADAPTER_PREFIX = "model."  # HFCausalLMAdapter wraps the Hugging Face model as ``.model``


class ExportError(UserInputError, ValueError):
    """An export that cannot be written faithfully (the message names the reason and the fix)."""


@dataclass
class TernaryTensor:
    """One ternary layer of the checkpoint: int8 codes ``[out, in]`` and its absmean scale."""

    name: str
    codes: Tensor
    scale: float
    act_bits: int | None
    hadamard_block: int | None
    bias: Tensor | None = None
    norm_weight: Tensor | None = None


@dataclass
class ExportSource:
    """A verified packed checkpoint: manifest, ternary layers and the full-precision rest."""

    directory: Path
    manifest: dict[str, Any]
    ternary: dict[str, TernaryTensor]
    rest: dict[str, Tensor]
    arch: str
    arch_config: dict[str, Any] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        """The quantization scheme (``ternary`` or ``hadamard``), from the layers and model_type."""
        if any(t.hadamard_block is not None for t in self.ternary.values()):
            return "hadamard"
        model_type = str(self.manifest.get("model_type", ""))
        prefix = f"bitsweep-{self.arch}-"
        return model_type[len(prefix) :] if model_type.startswith(prefix) else "ternary"


def resolve_packed_dir(path: str | os.PathLike[str]) -> Path:
    """The packed-checkpoint directory of ``path``: itself, or its ``packed/`` sub-directory.

    Raises FileNotFoundError naming the path when neither holds a ``manifest.json``.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist (give a checkpoint directory or run id)")
    for candidate in (root, root / PACKED_DIR):
        if (candidate / MANIFEST_FILE).is_file() and (candidate / TENSORS_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"{root} is not a packed checkpoint: no {MANIFEST_FILE} and {TENSORS_FILE} in it or in "
        f"{root / PACKED_DIR} (a trial writes them at its final step)"
    )


def read_source(path: str | os.PathLike[str]) -> ExportSource:
    """Read and verify the packed checkpoint at ``path`` (see :func:`resolve_packed_dir`).

    Raises FileNotFoundError for a missing checkpoint and ExportError for a corrupt one.
    """
    directory = resolve_packed_dir(path)
    try:
        checkpoint = load_packed_checkpoint(directory)
    except CheckpointError as err:
        raise ExportError(str(err)) from None
    manifest = checkpoint.manifest
    state = dict(checkpoint.state_dict)
    ternary: dict[str, TernaryTensor] = {}
    for name, info in manifest.get("ternary_layers", {}).items():
        prefix = f"{name}." if name else ""
        codes = state.pop(f"{prefix}codes")
        scale = state.pop(f"{prefix}scale")
        if codes.dim() != 2:
            raise ExportError(f"ternary layer {name!r} has shape {tuple(codes.shape)}, not 2-D")
        ternary[name] = TernaryTensor(
            name=name,
            codes=codes.to(torch.int8),
            scale=float(scale),
            act_bits=info.get("act_bits"),
            hadamard_block=info.get("hadamard_block"),
            bias=state.pop(f"{prefix}bias", None),
            norm_weight=state.pop(f"{prefix}norm.weight", None),
        )
    architecture = manifest.get("architecture") or {}
    arch = str(architecture.get("arch") or "unknown")
    config = dict(architecture.get("config") or {})
    return ExportSource(directory, manifest, ternary, state, arch, config)
