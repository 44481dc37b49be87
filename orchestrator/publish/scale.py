"""The scale file of ``make results``: which studies run, and the overrides that size them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import UserError


class PublishError(UserError):
    """A scale file or results request that cannot be honoured (one line, exit 2)."""


class StudyScale(BaseModel):
    """How large one study runs. ``set``: dotted overrides of the study's sweep (run keys such as
    ``train.steps``, or ``search.num_samples``), applied after the study's own settings."""

    model_config = ConfigDict(extra="forbid")

    set: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    widths: list[int] | None = Field(None, min_length=1)  # gradual: model.d_model values
    depths: list[int] | None = Field(None, min_length=1)  # reversible_memory: model.n_layers
    base_steps: int = Field(300, ge=1)  # bitnet_finetune: pretraining steps of its base model


class ScaleFile(BaseModel):
    """``studies``: one entry per study to run; a study left out is not run, and its section
    says so."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    studies: dict[str, StudyScale]


def load_scale(path: str | Path, known: list[str]) -> ScaleFile:
    """Read and validate a scale file; every problem is one :class:`PublishError` line naming
    the file and the key."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise PublishError(f"scale file {str(file)!r} not found: pass --scale results/scale.yaml")
    try:
        document = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or "unreadable"
        raise PublishError(f"scale file {str(file)!r} is not valid YAML{line}: {problem}") from None
    try:
        scale = ScaleFile.model_validate(document or {})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PublishError(f"scale file {str(file)!r}: {where}: {first['msg']}") from None
    unknown = sorted(set(scale.studies) - set(known))
    if unknown:
        raise PublishError(
            f"scale file {str(file)!r}: unknown study {unknown[0]!r}; the studies are "
            f"{', '.join(known)}"
        )
    return scale
