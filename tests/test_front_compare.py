"""Two sweeps' Pareto fronts in one plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from orchestrator.front_compare import compare_fronts

OBJECTIVES = [("val/acc", "max"), ("model/bits_total", "min")]


def _table(points: list[tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {"trial_id": [f"t{i}" for i in range(len(points))],
         "val/acc": [a for a, _ in points], "model/bits_total": [b for _, b in points]}
    )  # fmt: skip


def test_each_sweep_gets_its_front_as_a_line(tmp_path: Path) -> None:
    gradient = _table([(0.9, 100.0), (0.95, 200.0), (0.85, 300.0)])  # the last is dominated
    search = _table([(0.8, 50.0), (0.97, 400.0)])
    path = tmp_path / "fronts.png"
    fig = compare_fronts({"gradient": gradient, "search": search}, OBJECTIVES, path)
    assert path.stat().st_size > 0
    lines = fig.axes[0].get_lines()
    assert [len(line.get_xdata()) for line in lines] == [2, 2]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["gradient (2 on the front of 3)", "search (2 on the front of 2)"]
    # drawn in the metrics' own units (accuracy as reported, not negated)
    assert sorted(lines[0].get_xdata()) == pytest.approx([0.9, 0.95])


def test_needs_two_objectives() -> None:
    with pytest.raises(ValueError, match="2 objectives"):
        compare_fronts({"a": _table([(0.9, 1.0)])}, OBJECTIVES[:1])
