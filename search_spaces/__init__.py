"""Sweep presets: the YAML sweep files shipped with the package, and their loader."""

from __future__ import annotations

from importlib import resources

import yaml

_PRESET_DIR = "presets"


def preset_names() -> list[str]:
    """The names of the shipped presets, sorted."""
    folder = resources.files(__package__) / _PRESET_DIR
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_preset_text(name: str) -> str:
    """The YAML text of preset ``name``; KeyError names the valid presets."""
    if name not in preset_names():
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}")
    return (resources.files(__package__) / _PRESET_DIR / f"{name}.yaml").read_text()


def preset_descriptions() -> dict[str, str]:
    """Preset name -> its one-line description."""
    out = {}
    for name in preset_names():
        doc = yaml.safe_load(load_preset_text(name)) or {}
        out[name] = (
            str(doc.get("description", "")).strip().splitlines()[0]
            if doc.get("description")
            else ""
        )
    return out
