"""Cells and verdicts of RESULTS.md (orchestrator.publish.stats)."""

from __future__ import annotations

import math

import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.publish.stats import Cell, cells, markdown_table, verdict

values = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=20)


@given(values)
def test_a_cell_is_the_sample_mean_and_std(xs: list[float]) -> None:
    cell = Cell(tuple(xs))
    series = pd.Series(xs)
    assert math.isclose(cell.mean, series.mean(), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(cell.std, series.std(ddof=1), rel_tol=1e-6, abs_tol=1e-6)
    assert f"(n={len(xs)})" in cell.text()


def test_cells_group_by_the_keys_and_average_the_seeds_only() -> None:
    table = pd.DataFrame({
        "scenario": ["a", "a", "b", "b"], "train.seed": [0, 1, 0, 1],
        "val/acc": [0.5, 0.7, 0.9, float("nan")],
    })  # fmt: skip
    by = cells(table, ["scenario"], "val/acc")
    assert by[("a",)].values == (0.5, 0.7)
    assert by[("b",)].values == (0.9,)  # a failed seed is left out, not counted as 0


def test_a_verdict_calls_a_difference_real_only_beyond_two_standard_errors() -> None:
    noisy_a, noisy_b = Cell((0.90, 0.80, 0.95)), Cell((0.85, 0.92, 0.80))
    assert verdict(noisy_a, noisy_b, "max").startswith("within noise")
    clear_a, clear_b = Cell((0.95, 0.951, 0.949)), Cell((0.80, 0.801, 0.799))
    assert verdict(clear_a, clear_b, "max").startswith("better")
    assert verdict(clear_a, clear_b, "min").startswith("worse")
    assert "one seed" in verdict(Cell((0.9,)), Cell((0.8,)), "max")
    assert verdict(Cell(()), clear_b, "max") == "not measured"


def test_a_markdown_table_has_a_header_an_alignment_row_and_one_row_each() -> None:
    lines = markdown_table(["a", "b"], [[1, 2], [3, 4]])
    assert lines == ["| a | b |", "| --- | ---: |", "| 1 | 2 |", "| 3 | 4 |"]
