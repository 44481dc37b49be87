"""Which keys an ablation cell averages over (issue 18), from the real presets' search spaces:
seeds are averaged, other grid / choice keys split the rows, sampled keys are marginalized."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from handmade_sweeps import SAMPLED_KEY, bitnet_lm_document, lm_search_block, lm_table

from orchestrator.ablation_keys import CellKeys, cell_keys, is_seed_key, stored_cell_keys
from orchestrator.analysis import ablation_table


def lm_frame() -> pd.DataFrame:
    return pd.DataFrame([{**t.params, "val/bpb": t.final("val/bpb")} for t in lm_table()])


def test_bitnet_lm_cells_split_by_the_norm_average_seeds_and_name_the_sampled_key() -> None:
    space = lm_search_block(bitnet_lm_document())  # as the tracker logs it
    table = lm_frame()
    keys = cell_keys(space, table, "scenario", "schedule.lambda_warmup_frac")
    assert keys == CellKeys(
        split=("model.rmsnorm_post_attn",), seeds=("train.seed",), marginalized=(SAMPLED_KEY,)
    )
    assert keys.describe() == (
        "mean ± std over train.seed (n per cell); rows split by model.rmsnorm_post_attn; "
        f"marginalized over sampled {SAMPLED_KEY}"
    )
    long = ablation_table(table, "scenario", "schedule.lambda_warmup_frac", "val/bpb", keys=keys)
    assert len(long) == 12 and (long["count"] == 2).all()
    # the preset's other ablation: the norm is the cols, the warm-up splits the rows instead
    other = cell_keys(space["space"], table, "scenario", "model.rmsnorm_post_attn")
    assert other.split == ("schedule.lambda_warmup_frac",)


def test_bit_budget_marginalizes_its_sampled_weight() -> None:
    import yaml

    from search_spaces import load_preset_text

    space = yaml.safe_load(load_preset_text("bit-budget"))["search"]["space"]
    table = pd.DataFrame(
        {
            "quant.quantize_input": [True, False, True, False],
            "loss.bit_loss_weight": [1e-5, 3e-4, 2e-2, 5.0],
            "model/bits_total": [1.0, 2.0, 3.0, 4.0],
        }
    )
    keys = cell_keys(space, table, "quant.quantize_input", None)
    assert keys == CellKeys(marginalized=("loss.bit_loss_weight",))
    assert keys.describe() == (
        "mean ± std over repeats of the same keys (n per cell); "
        "marginalized over sampled loss.bit_loss_weight"
    )


def test_keys_that_do_not_vary_inside_a_cell_change_nothing() -> None:
    space = {
        "scenario": {"dist": "grid", "values": []},
        "quant.scheme": {"dist": "choice", "values": ["ternary", "hadamard"]},
        "model.seed": {"dist": "grid", "values": [0, 1]},
        "train.steps": {"dist": "grid", "values": [10]},
    }
    table = pd.DataFrame(
        {
            "scenario": ["a", "a", "b", "b"],
            "quant.scheme": ["ternary", "ternary", "hadamard", "hadamard"],  # set by the scenario
            "model.seed": [0, 1, 0, 1],
            "train.steps": [10, 10, 10, 10],
        }
    )
    assert cell_keys(space, table, "scenario", None) == CellKeys(seeds=("model.seed",))
    assert is_seed_key("train.seed") and is_seed_key("data.seed") and not is_seed_key("seeds")


def test_int_ranges_and_undeclared_keys_split_when_small() -> None:
    space = {
        "growth.window": {"dist": "int", "low": 1, "high": 3},
        "model.depth": {"dist": "int", "low": 1, "high": 64},
        "quant.layer_bits": {"dist": "per_layer", "values": [2, 4]},
    }
    table = pd.DataFrame(
        {
            "scenario": ["a"] * 12,
            "growth.window": [1, 2, 3] * 4,
            "model.depth": [5, 17, 33, 40, 2, 63, 8, 9, 10, 11, 12, 13],
            "quant.layer_bits": [{"l0": 2}, {"l0": 4}] * 6,
        }
    )
    keys = cell_keys(space, table, "scenario", None)
    assert keys.split == ("growth.window", "quant.layer_bits")
    assert keys.marginalized == ("model.depth",)


def test_marginalize_on_request_and_without_a_space() -> None:
    space = lm_search_block(bitnet_lm_document())
    table = lm_frame()
    keys = cell_keys(space, table, "scenario", None, marginalize=["model.rmsnorm_post_attn"])
    assert keys.split == ("schedule.lambda_warmup_frac",)
    assert keys.marginalized == ("model.rmsnorm_post_attn", SAMPLED_KEY)
    with pytest.raises(ValueError, match="cannot marginalize"):
        cell_keys(space, table, "scenario", None, marginalize=["model.rmsnorm"])
    with pytest.raises(ValueError, match=r"'scenari' is not a column.*'scenario'"):
        cell_keys(space, table, "scenari", None)
    unknown = cell_keys(None, table, "scenario", None)
    assert not unknown.known and "search space is unknown" in unknown.describe()


def test_a_stored_cells_file_keeps_its_keys(tmp_path: Path) -> None:
    space = lm_search_block(bitnet_lm_document())
    keys = cell_keys(space, lm_frame(), "scenario", "schedule.lambda_warmup_frac")
    long = ablation_table(lm_frame(), "scenario", "schedule.lambda_warmup_frac", "val/bpb",
                          keys=keys)  # fmt: skip
    long.to_parquet(tmp_path / "cells.parquet", index=False)
    stored = stored_cell_keys(pd.read_parquet(tmp_path / "cells.parquet"))
    assert stored == ("scenario", "schedule.lambda_warmup_frac", keys)
    old = pd.DataFrame({"scenario": ["a"], "mean": [1.0], "std": [0.0], "count": [1]})
    assert stored_cell_keys(old) is None
