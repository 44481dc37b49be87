"""Export trained ternary models to the formats people run them in (issue 19).

Pure torch + safetensors + gguf (no Ray, no MLflow): a bitsweep packed checkpoint becomes

* ``hf-bitnet``: a directory ``transformers.AutoModelForCausalLM.from_pretrained`` loads with its
  BitNet quantization config (:mod:`.hf_bitnet`, ``hf_causal_lm`` models);
* ``gguf-tq2`` / ``gguf-tq1``: a GGUF file with TQ2_0 / TQ1_0 ternary tensors (:mod:`.gguf_export`),
  architecture ``llama`` for Llama-family models, ``bitsweep-byte-lm`` / ``bitsweep-bit-lm`` else;

each with ``export_manifest.json`` (:mod:`.manifest`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .manifest import EXPORT_MANIFEST
from .source import ExportError, ExportSource, read_source, resolve_packed_dir

FORMATS = ("hf-bitnet", "gguf-tq2", "gguf-tq1")
ARTIFACTS_DIR = "artifacts"  # trainables.hf_pipeline.ARTIFACTS_DIR: the tracker uploads it
EXPORT_DIR = "export"

__all__ = [
    "EXPORT_MANIFEST",
    "FORMATS",
    "ExportError",
    "ExportSource",
    "export_into_checkpoint",
    "export_model",
    "read_source",
    "resolve_packed_dir",
]


def export_model(
    checkpoint: str | os.PathLike[str],
    export_format: str,
    out: str | os.PathLike[str],
    *,
    base_model: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Export the packed checkpoint at ``checkpoint`` (a trial checkpoint or its ``packed/``) to
    ``out`` in ``export_format`` (one of :data:`FORMATS`); returns the export manifest.

    Raises FileNotFoundError for a missing checkpoint and ExportError (naming the reason and the
    fix) for one that this format cannot represent faithfully.
    """
    if export_format not in FORMATS:
        raise ExportError(f"--format {export_format!r} is not known; valid: {', '.join(FORMATS)}")
    source = read_source(checkpoint)
    target = Path(out)
    if export_format == "hf-bitnet":
        from .hf_bitnet import export_hf_bitnet

        return export_hf_bitnet(source, target, base_model=base_model)
    from .gguf_export import export_gguf

    return export_gguf(source, target, export_format, base_model=base_model)


def export_into_checkpoint(
    checkpoint: str | os.PathLike[str],
    formats: tuple[str, ...] | list[str],
    *,
    base_model: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Export a trial's final checkpoint in each of ``formats`` to
    ``<checkpoint>/artifacts/export/<format>/``; returns those directories.

    The tracker uploads ``<checkpoint>/artifacts/`` to the trial's MLflow run, so the exports land
    there as ``export/<format>/`` (the hook for an ``export.formats`` key of the run config).
    """
    root = Path(checkpoint)
    written = []
    for export_format in formats:
        target = root / ARTIFACTS_DIR / EXPORT_DIR / export_format
        export_model(root, export_format, target, base_model=base_model)
        written.append(target)
    return written
