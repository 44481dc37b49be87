"""What a RESULTS.md section reads: the studies' sweeps in the store, and what it writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.publish.run_studies import EXPERIMENT
from orchestrator.publish.scale import ScaleFile, StudyScale
from orchestrator.publish.studies import study, sweep_name


@dataclass
class Section:
    """One section: its title, markdown lines, and its figures by the study they come from."""

    key: str
    title: str
    lines: list[str]
    figures: dict[str, list[Path]] = field(default_factory=dict)

    def add_figure(self, study_name: str, path: Path, caption: str, root: Path) -> None:
        """Link ``path`` (relative to RESULTS.md's folder ``root``) under ``caption``."""
        self.figures.setdefault(study_name, []).append(path)
        self.lines += ["", f"![{caption}]({path.relative_to(root).as_posix()})"]


@dataclass
class Sources:
    """The store and the studies of one ``make results``: ``parents`` holds the parent run ids
    of the studies run now; a study without one is read as the newest sweep of its name."""

    tracking_uri: str
    scale: ScaleFile
    figures: Path
    root: Path  # the folder of RESULTS.md (figure links are relative to it)
    scale_path: str = ""
    parents: dict[str, str] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    def results(self, name: str) -> Any | None:
        """The :class:`~orchestrator.results.SweepResults` of study ``name``; None when the
        scale file leaves it out."""
        from orchestrator.results import load_sweep_results

        if name not in self.scale.studies:
            return None
        if name not in self._cache:
            self._cache[name] = load_sweep_results(
                self.parents.get(name, sweep_name(name)),
                tracking_uri=self.tracking_uri,
                experiment=EXPERIMENT,
            )
        return self._cache[name]

    def scale_of(self, name: str) -> StudyScale | None:
        """The scale of study ``name`` (None when not run)."""
        return self.scale.studies.get(name)

    def describe(self, name: str) -> str:
        """``study `x` (preset p, N trials of S steps)`` from the sweep as stored."""
        r = self.results(name)
        spec = (r.spec() or {}) if r is not None else {}
        steps = (spec.get("train") or {}).get("steps", "?")
        n = len(r.trials) if r is not None else 0
        trials = "trial" if n == 1 else "trials"
        return f"study `{name}` (preset `{study(name).preset}`, {n} {trials} of {steps} steps)"

    def figure(self, name: str) -> Path:
        """Where figure ``name`` (without suffix) goes."""
        return self.figures / f"{name}.png"


def not_run(name: str) -> str:
    """The line of a section whose study the scale file left out."""
    return (
        f"_Study `{name}` is not in this scale file: not run. Add it under `studies:` to "
        "measure it._"
    )
