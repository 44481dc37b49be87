"""Tags a trial's MLflow run carries, derived from its flat run config (torch-free).

Seed 003 tags a fine-tuning run ``stage:bitnet158``, ``source:<data source>`` and
``model:<name>``; the tracker sets them as MLflow tags ``stage``, ``source`` and ``model``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any


def run_tags(params: Mapping[str, Any]) -> dict[str, str]:
    """The seed's tags for an ``hf_causal_lm`` trial (``{}`` for every other architecture)."""
    if params.get("model.arch") != "hf_causal_lm":
        return {}
    path = str(params.get("model.hf_path") or "")
    name = PurePath(path.rstrip("/\\")).name or path
    return {"stage": "bitnet158", "source": str(params.get("data.source", "")), "model": name}
