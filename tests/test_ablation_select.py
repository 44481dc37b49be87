"""Which trials an ablation matrix compares: finished ones, or every trial at one step."""

from __future__ import annotations

import math

import pandas as pd

from orchestrator.ablation_select import select_values
from orchestrator.analysis import ablation_table

# The demo's mix-up: hadamard's best trial finished, two hadamard trials were cut at step 50.
TABLE = pd.DataFrame({
    "trial_id": ["a", "b", "c", "d", "e"],
    "run_id": ["ra", "rb", "rc", "rd", "re"],
    "status": ["finished", "stopped_early", "stopped_early", "finished", "failed"],
    "quant.scheme": ["hadamard", "hadamard", "hadamard", "ternary", "ternary"],
    "val/bpb": [2.5, 3.6, 3.65, 2.7, 9.0],
})  # fmt: skip
HISTORY = {("ra", "val/bpb"): [(50, 3.4), (300, 2.5)], ("rb", "val/bpb"): [(50, 3.6)],
           ("rc", "val/bpb"): [(50, 3.65)], ("rd", "val/bpb"): [(50, 3.5), (300, 2.7)],
           ("re", "val/bpb"): [(50, 9.0)]}  # fmt: skip


def test_default_takes_finished_trials_and_says_so() -> None:
    selected, label = select_values(TABLE, "val/bpb")
    assert label == "finished trials only (2 stopped early left out)"
    cells = ablation_table(selected, "quant.scheme", None, "val/bpb").set_index("quant.scheme")
    assert cells.loc["hadamard", "mean"] == 2.5 and cells.loc["hadamard", "count"] == 1
    assert cells.loc["ternary", "count"] == 1  # the failed trial keeps the cell, adds no value
    # the mixed table would have ranked hadamard behind ternary
    mixed = ablation_table(TABLE[TABLE.status != "failed"], "quant.scheme", None, "val/bpb")
    assert mixed.set_index("quant.scheme").loc["hadamard", "mean"] > 2.7


def test_at_a_step_every_trial_that_reached_it_compares() -> None:
    selected, label = select_values(
        TABLE, "val/bpb", at_step=50, history=lambda run, metric: HISTORY[(run, metric)]
    )
    assert label.startswith("every trial at step 50 (4 reached it")
    assert list(selected["val/bpb"][:4]) == [3.4, 3.6, 3.65, 3.5]
    assert math.isnan(selected["val/bpb"].iloc[4])  # failed: no value
