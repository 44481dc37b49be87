"""Heatmaps and Pareto plots are written as readable PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from orchestrator.ablation_keys import CellKeys
from orchestrator.analysis import ablation_counts, ablation_matrix, pareto_front
from orchestrator.plots import ablation_figure, ablation_heatmap, pareto_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    return image


def test_ablation_heatmap(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "scenario": ["W", "W", "WA", "WA", "A", "A"],
            "quant.weight_bits": [2, 4, 2, 4, 2, 2],
            "val/acc": [0.9, 0.95, 0.8, np.nan, 0.7, 0.72],
        }
    )
    mean, std = ablation_matrix(df, "scenario", "quant.weight_bits", "val/acc")
    count = ablation_counts(df, "scenario", "quant.weight_bits", "val/acc")
    path = ablation_heatmap(
        mean, std, tmp_path / "ablation" / "br.png", value="val/acc", count=count
    )
    assert path == tmp_path / "ablation" / "br.png"
    assert_png(path)


def test_ablation_heatmap_says_what_a_cell_averages(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "scenario": ["BitLinear"] * 4 + ["H-BitLinear all"] * 4,
            "model.rmsnorm_post_attn": [False, False, True, True] * 2,
            "train.seed": [0, 1] * 4,
            "val/bpb": [2.0, 2.01, 2.3, 2.31, 2.2, 2.21, 2.5, 2.51],
        }
    )
    keys = CellKeys(split=("model.rmsnorm_post_attn",), seeds=("train.seed",),
                    marginalized=("loss.bit_loss_weight",))  # fmt: skip
    mean, std = ablation_matrix(df, "scenario", None, "val/bpb", keys=keys)
    fig = ablation_figure(mean, std, tmp_path / "cells.png", title="layers",
                          subtitle=keys.describe())  # fmt: skip
    ax = fig.axes[0]
    assert " ".join(fig.get_suptitle().split()) == "layers " + keys.describe()
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[1] == "BitLinear · rmsnorm_post_attn=True" and len(labels) == 4
    assert_png(tmp_path / "cells.png")


def test_pareto_plot_two_and_three_objectives(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {
            "val/acc": rng.uniform(0.5, 1.0, 20),
            "model/bits_total": rng.uniform(1e3, 1e4, 20),
            "route/expected_exit": rng.uniform(1, 4, 20),
        }
    )
    two = [("val/acc", "max"), ("model/bits_total", "min")]
    path = pareto_plot(df, two, tmp_path / "front2.png", front=pareto_front(df, two))
    wide2 = assert_png(path).shape[1]
    three = [*two, ("route/expected_exit", "min")]
    wide3 = assert_png(pareto_plot(df, three, tmp_path / "pareto" / "front3.png")).shape[1]
    assert wide3 > 2 * wide2  # three pairwise panels side by side
    with pytest.raises(ValueError, match="2 or 3 objectives"):
        pareto_plot(df, two[:1], tmp_path / "one.png")
