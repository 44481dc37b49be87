"""Run names and parent summaries as the MLflow UI shows them."""

from __future__ import annotations

import math

import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.naming import child_run_name, short_value, sweep_counts


def test_child_names_come_from_the_searched_values() -> None:
    params = {"quant.scheme": "hadamard", "train.lr": 0.0035, "schedule.lambda_warmup_frac": 0.42,
              "train.steps": 300}  # fmt: skip
    searched = ["schedule.lambda_warmup_frac", "train.lr", "quant.scheme"]
    assert child_run_name(params, searched, "abc123") == "hadamard warmup_frac=0.42 lr=3.5e-3"
    assert child_run_name(params, [], "abc123") == "abc123"


@given(st.floats(min_value=1e-9, max_value=1e9, allow_nan=False))
def test_short_values_keep_two_significant_digits(value: float) -> None:
    text = short_value(value)
    assert len(text) <= 8
    assert math.isclose(float(text), value, rel_tol=0.06)


def test_counts_by_status() -> None:
    table = pd.DataFrame({"status": ["finished", "stopped_early", "stopped_early", "failed"]})
    assert sweep_counts(table) == {"trials": 4, "finished": 1, "stopped_early": 2, "failed": 1}
