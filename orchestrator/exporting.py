"""``bitsweep export RUN_OR_CHECKPOINT --format FMT --out DIR``: a trained model in other formats.

RUN_OR_CHECKPOINT is a checkpoint directory (a trial's final checkpoint or its ``packed/``
sub-directory) or an MLflow run id, whose ``model/packed`` artifact (what the tracker uploads at
the end of a trial) is downloaded with MLflow's client first. The export itself is
:func:`trainables.export.export_model` (pure torch + safetensors + gguf).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.errors import EXIT_OK, UserError
from orchestrator.run_layout import PACKED_MODEL as PACKED_ARTIFACT
from orchestrator.run_layout import RUN_ID

FORMATS = ("hf-bitnet", "gguf-tq2", "gguf-tq1")  # trainables.export.FORMATS (no torch import here)


def download_packed(run_id: str, destination: Path, tracking_uri: str | None = None) -> Path:
    """Download run ``run_id``'s ``model/packed`` artifact into ``destination``; its path.

    Raises UserError naming the run when MLflow has no such run or artifact.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking_uri import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
        local = client.download_artifacts(run_id, PACKED_ARTIFACT, str(destination))
    except (MlflowException, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"MLflow run {run_id} at {uri}: cannot download its {PACKED_ARTIFACT} artifact "
            f"({first}); only a finished trial's run has it"
        ) from None
    return Path(local)


def export_run_or_checkpoint(
    source: str,
    export_format: str,
    out: str | Path,
    *,
    base_model: str | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Export a checkpoint directory or an MLflow run's packed model; returns the export manifest.

    Raises UserError (one line for the CLI) for a path that is neither, an unknown run, or a model
    the format cannot represent.
    """
    from trainables.export import ExportError, export_model

    path = Path(source).expanduser()
    try:
        if path.exists():
            return export_model(path, export_format, out, base_model=base_model)
        if RUN_ID.fullmatch(source):
            with tempfile.TemporaryDirectory(prefix="bitsweep-export-") as tmp:
                packed = download_packed(source, Path(tmp), tracking_uri)
                return export_model(packed, export_format, out, base_model=base_model)
    except (ExportError, FileNotFoundError) as err:
        raise UserError(f"cannot export {source}: {err}") from None
    raise UserError(
        f"{source!r} is neither an existing checkpoint directory nor an MLflow run id "
        "(32 hex digits): give a trial's checkpoint directory (or its packed/) or a run id"
    )


def _summary(manifest: dict[str, Any], out: Path) -> str:
    types = ", ".join(
        f"{kind} {entry['count']} tensors {entry['bits_per_weight']:.4g} bits/weight"
        for kind, entry in sorted(manifest.get("tensor_types", {}).items())
    )
    return f"exported {manifest['export_format']} to {out}: {types}"


def cmd_export(args: argparse.Namespace) -> int:
    """``bitsweep export``: write the model in ``--format`` to ``--out``."""
    manifest = export_run_or_checkpoint(
        args.source,
        args.format,
        args.out,
        base_model=args.base_model,
        tracking_uri=args.tracking_uri,
    )
    print(_summary(manifest, Path(args.out)))
    return EXIT_OK


def add_export_command(add: Callable[..., argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``export`` with the CLI's ``add(name, fn, help)``; returns its parser."""
    p = add("export", cmd_export, "export a trained ternary model to transformers or GGUF")
    p.add_argument(
        "source",
        metavar="RUN_OR_CHECKPOINT",
        help="a trial's checkpoint directory (or its packed/) or an MLflow run id",
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="the export format")
    p.add_argument("--out", required=True, help="the output directory")
    p.add_argument(
        "--base-model",
        help="hf_causal_lm: the Hugging Face directory it was converted from (default: the "
        "run's model.hf_path)",
    )
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    return p
