"""The manifest that travels with every export (``export_manifest.json`` in the output directory).

It records where the model came from (base model, scheme, the lambda training reached, steps, the
source checkpoint's SHA-256), how it is packed in the export (per tensor type: count, elements,
bytes and the bits per weight measured from the written file), and the SHA-256 of every file
written, so that a copy can be verified without bitsweep. The source checkpoint's own manifest and
seed 003's ``training_manifest.json`` (when present) are copied beside it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .source import ExportSource

EXPORT_MANIFEST = "export_manifest.json"
SOURCE_MANIFEST = "source_manifest.json"
TRAINING_MANIFEST = "training_manifest.json"
FORMAT = "bitsweep-export"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_type_summary(rows: list[tuple[str, int, int]]) -> dict[str, dict[str, float]]:
    """Per tensor type: ``count``, ``elements``, ``bytes`` and ``bits_per_weight`` (8 bytes /
    elements) from ``(type, elements, bytes)`` rows measured on the written file."""
    summary: dict[str, dict[str, float]] = {}
    for kind, elements, nbytes in rows:
        entry = summary.setdefault(kind, {"count": 0, "elements": 0, "bytes": 0})
        entry["count"] += 1
        entry["elements"] += elements
        entry["bytes"] += nbytes
    for entry in summary.values():
        elements = entry["elements"]
        entry["bits_per_weight"] = 8 * entry["bytes"] / elements if elements else 0.0
    return summary


def write_export_manifest(
    source: ExportSource,
    out: Path,
    export_format: str,
    *,
    files: list[str],
    tensor_types: Mapping[str, Mapping[str, float]],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``export_manifest.json`` (and copy the source manifests) into ``out``.

    Args:
        source: the checkpoint exported.
        out: the export directory (already holding ``files``).
        export_format: ``hf-bitnet``, ``gguf-tq2`` or ``gguf-tq1``.
        files: the written files (relative to ``out``) whose SHA-256 the manifest records.
        tensor_types: :func:`tensor_type_summary` of the written tensors.
        extra: format-specific fields (the packing, the scale tolerance, notes).

    Returns:
        The manifest's path.
    """
    m = source.manifest
    src_tensors = source.directory / "model.safetensors"
    copied = [SOURCE_MANIFEST]
    shutil.copyfile(source.directory / "manifest.json", out / SOURCE_MANIFEST)
    if (source.directory / TRAINING_MANIFEST).is_file():
        shutil.copyfile(source.directory / TRAINING_MANIFEST, out / TRAINING_MANIFEST)
        copied.append(TRAINING_MANIFEST)
    document: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "export_format": export_format,
        "base_model": m.get("base_model"),
        "arch": source.arch,
        "scheme": source.scheme,
        "model_type": m.get("model_type"),
        "final_lambda": m.get("final_lambda"),
        "training_steps": m.get("training_steps"),
        "lambda_warmup_frac": m.get("lambda_warmup_frac"),
        "compression_ready": m.get("compression_ready"),
        "act_bits": sorted({t.act_bits for t in source.ternary.values()}, key=str),
        "ternary_layers": len(source.ternary),
        "ternary_weights": sum(t.codes.numel() for t in source.ternary.values()),
        "source": {
            "directory": str(source.directory.resolve()),
            "packing": m.get("packing"),
            "bits_per_weight": m.get("bits_per_weight"),
            "tensors_sha256": m.get("sha256"),
            "verified_sha256": sha256_file(src_tensors) if src_tensors.is_file() else None,
        },
        "tensor_types": {k: dict(v) for k, v in tensor_types.items()},
        "files": {name: sha256_file(out / name) for name in [*files, *copied]},
    }
    document.update(extra or {})
    path = out / EXPORT_MANIFEST
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path
