"""The results API on hand-made sweeps in a local sqlite MLflow store: the trial table and its
types, best-over-history, the long-form history, Pareto fronts and ablation aggregation (checked
against numpy), lookups by name and run id, clear errors; and the plots drawn from them."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from handmade_sweeps import (
    OBJECTIVES,
    SAMPLED_KEY,
    STEPS,
    Handmade,
    completed,
    write_lm_sweep,
    write_sweep,
)

from orchestrator import plots
from orchestrator.ablation_keys import CellKeys
from orchestrator.results import (
    HISTORY_COLUMNS,
    ResultsError,
    SweepNotFoundError,
    SweepResults,
    load_sweep_results,
)
from orchestrator.tracking_uri import TrackingUnreachableError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Handmade:
    root = tmp_path_factory.mktemp("results-store")
    return write_sweep(f"sqlite:///{root / 'mlflow.db'}")


@pytest.fixture(scope="module")
def res(made: Handmade) -> SweepResults:
    return load_sweep_results(made.name, tracking_uri=made.uri, experiment=made.experiment)


def test_trial_table_one_typed_row_per_trial(made: Handmade, res: SweepResults) -> None:
    table = res.trials
    assert res.parent_run_id == made.parent_run_id and res.name == "abl"
    assert res.objectives == OBJECTIVES
    assert list(table["trial_id"]) == sorted(made.trials)
    assert list(table.columns[:4]) == ["trial_id", "run_id", "status", "error"]
    assert dict(zip(table["trial_id"], table["run_id"], strict=True)) == {
        t.trial_id: t.run_id for t in made.trials.values()
    }
    # params come back with the types they were logged with
    assert table["quant.weight_bits"].dtype == np.int64
    assert table["train.lr"].dtype == np.float64
    assert table["model.subln"].dtype == bool
    assert pd.api.types.is_string_dtype(table["quant.scheme"])
    assert table["quant.act_bits"].isna().all()
    assert all(v == ["depth", "width"] for v in table["growth.strategy"])
    assert set(map(repr, table["quant.act_signed"])) == {"'auto'", "True"}
    by_id = table.set_index("trial_id")
    for trial in made.trials.values():
        row = by_id.loc[trial.trial_id]
        assert row["status"] == trial.status and row["error"] == trial.error
        for key, value in trial.params.items():
            assert row[key] == value or (value is None and pd.isna(row[key])), key
        for metric in trial.history:
            assert row[metric] == pytest.approx(trial.final(metric))
        acc = [v for _, v in trial.history["val/acc"]]
        bits = [v for _, v in trial.history["model/bits_total"]]
        assert row["best/val/acc"] == pytest.approx(max(acc))
        assert row["best/model/bits_total"] == pytest.approx(min(bits))
    # the best is over the history, not the final value (the fixture makes them differ)
    finished = by_id[by_id["status"] == "finished"]
    assert (finished["best/val/acc"] > finished["val/acc"]).all()


def test_arrow_table_and_summary(res: SweepResults) -> None:
    arrow = res.to_arrow()
    assert isinstance(arrow, pa.Table) and arrow.num_rows == len(res.trials)
    assert arrow.column_names == list(res.trials.columns)
    assert arrow.schema.field("quant.weight_bits").type == pa.int64()
    assert arrow.schema.field("best/val/acc").type == pa.float64()
    # a param mixing "auto" and true cannot be one arrow type: it reads as MLflow shows it
    assert sorted(set(arrow.column("quant.act_signed").to_pylist())) == ["auto", "true"]
    summary = res.summary()
    assert list(summary.columns) == [
        "trial_id", "status", "quant.weight_bits", "quant.scheme", "train.seed", "val/acc",
        "model/bits_total", "best/val/acc", "best/model/bits_total", "run_id",
    ]  # fmt: skip
    finished = summary[summary["status"] != "failed"]
    assert list(finished["val/acc"]) == sorted(finished["val/acc"], reverse=True)
    assert summary["status"].iloc[-1] == "failed"  # its partial 0.99 does not rank first
    assert res.best()["trial_id"] == finished["trial_id"].iloc[0]
    assert res.best("model/bits_total")["model/bits_total"] == finished["model/bits_total"].min()


def test_history_long_form(made: Handmade, res: SweepResults) -> None:
    history = res.history(["val/acc", "growth/stage"])
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["step"].dtype == np.int64 and history["value"].dtype == np.float64
    expected = [
        (t.trial_id, t.run_id, metric, step, value)
        for t in sorted(made.trials.values(), key=lambda t: t.trial_id)
        for metric in ("growth/stage", "val/acc")
        for step, value in t.history.get(metric, [])
    ]
    assert [tuple(r) for r in history.itertuples(index=False)] == expected
    chosen = res.history("val/loss", trial_ids=["t03", "t01"])
    assert sorted(set(chosen["trial_id"])) == ["t01", "t03"]
    assert list(chosen[chosen["trial_id"] == "t03"]["step"]) == list(STEPS)
    with pytest.raises(ResultsError, match=r"'val/acs'.*did you mean 'val/acc'"):
        res.history(["val/acs"])
    with pytest.raises(ResultsError, match="no trials \\['nope'\\]"):
        res.history(["val/acc"], trial_ids=["nope"])


def _brute_force_front(trials: list, objectives: list[tuple[str, str]]) -> set[str]:
    def better_or_equal(a: float, b: float, mode: str) -> bool:
        return a >= b if mode == "max" else a <= b

    front = set()
    for t in trials:
        dominated = any(
            all(better_or_equal(o.final(m), t.final(m), mode) for m, mode in objectives)
            and any(o.final(m) != t.final(m) for m, _ in objectives)
            for o in trials
        )
        if not dominated:
            front.add(t.trial_id)
    return front


def test_pareto_front_against_brute_force(made: Handmade, res: SweepResults) -> None:
    done = completed(made)
    front = res.pareto()
    assert set(front["trial_id"]) == _brute_force_front(done, OBJECTIVES)
    assert "t99" not in set(front["trial_id"])  # failed: its partial metrics take no part
    three = [("val/acc", "max"), ("model/bits_total", "min"), ("val/loss", "max")]
    assert set(res.pareto(three)["trial_id"]) == _brute_force_front(done, three)
    # names of the sweep's objectives take their modes; the failed trial joins on request
    assert set(res.pareto(["val/acc", "model/bits_total"])["trial_id"]) == set(front["trial_id"])
    assert "t99" in set(res.pareto(include_failed=True)["trial_id"])
    with pytest.raises(ResultsError, match="not an objective"):
        res.pareto(["val/loss", "val/acc"])


def test_ablation_mean_and_std_over_seeds(made: Handmade, res: SweepResults) -> None:
    mean, std = res.ablation("quant.weight_bits", "quant.scheme", "val/acc")
    cells = res.ablation_cells("quant.weight_bits", "quant.scheme", "val/acc")
    assert list(mean.index) == [2, 4, 8] and list(mean.columns) == ["lsq", "ternary"]
    for bits, scheme in itertools.product([2, 4], ["lsq", "ternary"]):
        values = np.array(
            [
                t.final("val/acc")
                for t in completed(made)
                if (t.params["quant.weight_bits"], t.params["quant.scheme"]) == (bits, scheme)
            ]
        )
        assert len(values) == 3  # three seeds
        assert mean.loc[bits, scheme] == pytest.approx(values.mean())
        assert std.loc[bits, scheme] == pytest.approx(values.std(ddof=1))
        cell = cells[(cells["quant.weight_bits"] == bits) & (cells["quant.scheme"] == scheme)]
        assert cell["count"].item() == 3
    # the failed trial keeps its cell (the grid keeps its shape) but adds no value
    assert np.isnan(mean.loc[8, "lsq"]) and np.isnan(mean.loc[8, "ternary"])
    assert cells[cells["quant.weight_bits"] == 8]["count"].tolist() == [0]
    counts = res.ablation_counts("quant.weight_bits", "quant.scheme", "val/acc")
    assert counts.to_numpy().tolist() == [[3, 3], [3, 3], [0, 0]]
    # by seed, the other grid keys stay cells of their own: one trial each (the failed one too)
    by_seed, _ = res.ablation("train.seed", None, "model/bits_total")
    assert by_seed.shape == (13, 1) and by_seed.index.name == "train.seed · weight_bits · scheme"
    one = next(t for t in completed(made) if t.trial_id == "t09")
    label = f"{one.params['train.seed']} · weight_bits=4 · scheme=ternary"
    assert (one.params["quant.weight_bits"], one.params["quant.scheme"]) == (4, "ternary")
    assert by_seed.loc[label].item() == pytest.approx(one.final("model/bits_total"))
    # averaging over them is a request, and the keys name them as marginalized
    grid = ["quant.weight_bits", "quant.scheme"]
    assert res.ablation_keys("train.seed", None, marginalize=grid).marginalized == tuple(grid)
    by_seed, by_seed_std = res.ablation("train.seed", None, "model/bits_total", marginalize=grid)
    for seed in (0, 1, 2):
        values = np.array(
            [t.final("model/bits_total") for t in completed(made) if t.params["train.seed"] == seed]
        )
        assert by_seed.loc[seed].item() == pytest.approx(values.mean())
        assert by_seed_std.loc[seed].item() == pytest.approx(values.std(ddof=1))
    with pytest.raises(ResultsError, match=r"quant\.weight_bit'.*did you mean"):
        res.ablation("quant.weight_bit", None, "val/acc")


def test_a_cell_averages_training_seeds_only(tmp_path: Path) -> None:
    made = write_lm_sweep(f"sqlite:///{tmp_path / 'mlflow.db'}")
    res = load_sweep_results("lm", tracking_uri=made.uri, experiment=made.experiment)
    rows, cols = "scenario", "schedule.lambda_warmup_frac"
    assert res.ablation_keys(rows, cols) == CellKeys(
        split=("model.rmsnorm_post_attn",), seeds=("train.seed",), marginalized=(SAMPLED_KEY,)
    )
    mean, std = res.ablation(rows, cols, "val/bpb")
    counts = res.ablation_counts(rows, cols, "val/bpb")
    # 3 scenarios x 2 norms rows, 2 warm-ups: two seeds a cell (mixing the norms gave 3 x 2 of 4)
    assert mean.shape == (6, 2) and (counts.to_numpy() == 2).all()
    label = "H-BitLinear all · rmsnorm_post_attn=True"
    values = [t.final("val/bpb") for t in made.trials.values()
              if (t.params["scenario"], t.params["model.rmsnorm_post_attn"],
                  t.params[cols]) == ("H-BitLinear all", True, 0.4)]  # fmt: skip
    assert len(values) == 2
    assert mean.loc[label, 0.4] == pytest.approx(np.mean(values))
    assert std.loc[label, 0.4] == pytest.approx(np.std(values, ddof=1))
    cells = res.ablation_cells(rows, cols, "val/bpb")
    assert {rows, cols, "model.rmsnorm_post_attn"} <= set(cells.columns) and len(cells) == 12
    assert cells.attrs["ablation"]["marginalized"] == [SAMPLED_KEY]
    # what the tracker stored at the sweep's end: the same cells (it read the logged space)
    stored = res.stored_ablations()
    assert set(stored) == {"layer_by_warmup", "layer_by_post_attn_norm"}
    pd.testing.assert_frame_equal(stored["layer_by_warmup"], cells, check_dtype=False)
    assert stored["layer_by_warmup"].attrs["ablation"] == cells.attrs["ablation"]
    assert len(stored["layer_by_post_attn_norm"]) == 12


def test_parent_artifacts_spec_and_searched_keys(res: SweepResults) -> None:
    assert res.searched_keys() == ["quant.weight_bits", "quant.scheme", "train.seed"]
    assert [s["name"] for s in res.ablation_specs()] == ["bits_by_scheme", "by_seed"]
    assert res.ablation_specs()[1]["cols"] is None
    stored = res.stored_ablations()
    assert set(stored) == {"bits_by_scheme"}  # what the tracker wrote at the sweep's end
    cells = stored["bits_by_scheme"]
    assert len(cells) == 5  # 2 x 2 cells and the failed trial's (8, lsq)
    failed = cells[cells["quant.weight_bits"] == 8]
    assert failed["count"].tolist() == [0]  # its partial metrics are not a result


def test_lookup_by_name_newest_and_by_parent_run_id(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old = write_sweep(uri, name="twice", seed=1, spec=False, finish=False)
    new = write_sweep(uri, name="twice", seed=2)
    assert load_sweep_results("twice", tracking_uri=uri, experiment="handmade").parent_run_id == (
        new.parent_run_id
    )
    by_id = load_sweep_results(old.parent_run_id, tracking_uri=uri, experiment="handmade")
    assert by_id.parent_run_id == old.parent_run_id and by_id.name == "twice"
    assert by_id.trials["val/acc"].tolist() == [t.final("val/acc") for t in old.trials.values()]
    assert by_id.searched_keys() == [] and by_id.ablation_specs() == []  # no spec logged
    # a run id finds its sweep from any experiment name
    assert (
        load_sweep_results(old.parent_run_id, tracking_uri=uri, experiment="other").name == "twice"
    )
    trial_run = old.trials["t00"].run_id
    with pytest.raises(SweepNotFoundError, match=f"parent run id {old.parent_run_id}"):
        load_sweep_results(trial_run, tracking_uri=uri, experiment="handmade")


def test_a_file_store_reads_the_same(
    res: SweepResults, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it behind a switch
    made = write_sweep(f"file://{tmp_path / 'mlruns'}")
    from_file = load_sweep_results(
        "abl", tracking_uri=str(tmp_path / "mlruns"), experiment="handmade"
    )
    assert from_file.parent_run_id == made.parent_run_id
    ignore = ["run_id"]
    pd.testing.assert_frame_equal(from_file.trials.drop(columns=ignore),
                                  res.trials.drop(columns=ignore))  # fmt: skip
    assert from_file.searched_keys() == res.searched_keys()
    history = from_file.history(["val/acc"]).drop(columns=ignore)
    pd.testing.assert_frame_equal(history, res.history(["val/acc"]).drop(columns=ignore))


def test_missing_sweep_store_and_server_are_named(made: Handmade, tmp_path: Path) -> None:
    with pytest.raises(SweepNotFoundError, match=r"no sweep named 'nope'.*sweeps there: abl"):
        load_sweep_results("nope", tracking_uri=made.uri, experiment=made.experiment)
    with pytest.raises(SweepNotFoundError, match="experiment 'absent' does not exist"):
        load_sweep_results("abl", tracking_uri=made.uri, experiment="absent")
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    with pytest.raises(TrackingUnreachableError, match="does not exist") as err:
        load_sweep_results("abl", tracking_uri=missing)
    assert missing in str(err.value) and not (tmp_path / "nowhere").exists()
    with pytest.raises(TrackingUnreachableError, match=r"http://127\.0\.0\.1:9"):
        load_sweep_results("abl", tracking_uri="http://127.0.0.1:9")


def test_default_tracking_uri(made: Handmade, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", made.uri)
    assert load_sweep_results("abl", experiment=made.experiment).parent_run_id == made.parent_run_id
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(Path(made.uri.removeprefix("sqlite:///")).parent)
    assert load_sweep_results("abl", experiment=made.experiment).parent_run_id == made.parent_run_id


# ---- plots drawn from the results ------------------------------------------------------------


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_learning_curves_one_line_per_trial(res: SweepResults, tmp_path: Path) -> None:
    history = res.history(["val/acc", "val/loss"])
    fig = plots.learning_curves(history, tmp_path / "curves.png", labels=res.trial_labels())
    _png(tmp_path / "curves.png")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in axes] == ["val/acc", "val/loss"]
    lines = axes[0].get_lines()
    assert len(lines) == len(res.trials)
    t03 = history[(history["trial_id"] == "t03") & (history["metric"] == "val/acc")]
    assert list(lines[3].get_ydata()) == pytest.approx(list(t03["value"]))
    assert not fig.legends  # 13 trials: more than max_legend, the legend would bury the plot
    fig = plots.learning_curves(history, labels=res.trial_labels(), max_legend=20)
    assert [t.get_text() for t in fig.legends[0].texts][3].startswith("t03 weight_bits=2")
    with pytest.raises(ValueError, match="no history"):
        plots.learning_curves(history, metrics=["val/bpb"])


def test_growth_timeline_marks_each_stage_increase(res: SweepResults, tmp_path: Path) -> None:
    history = res.history(["val/loss", "growth/stage"], trial_ids=["t00", "t01"])
    fig = plots.growth_timeline(history, tmp_path / "growth.png")
    _png(tmp_path / "growth.png")
    ax = fig.axes[0]
    curves = [line for line in ax.get_lines() if len(line.get_xdata()) > 2]
    markers = [line for line in ax.get_lines() if len(line.get_xdata()) == 2]
    assert len(curves) == 2
    # t00's stages 0, 1, 2 grow at steps 20 and 30; t01's 0, 1, 1 only at 20
    assert sorted(line.get_xdata()[0] for line in markers) == [20, 20, 30]
    assert "3 in 2 trials" in ax.get_title()


def test_bit_widths_bars_and_heatmap(res: SweepResults, tmp_path: Path) -> None:
    fig = plots.bit_widths_plot(res.trials, tmp_path / "bits.png", trial_ids=["t06", "t00"])
    _png(tmp_path / "bits.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["layers.0", "layers.2", "layers.10"]
    heights = [patch.get_height() for patch in ax.patches]
    assert heights == [8.0, 5.0, 4.0, 6.0, 3.0, 2.0]  # t06 (4 bits) first, then t00 (2 bits)
    heat = plots.bit_widths_plot(res.trials, kind="heatmap")
    assert heat.axes[0].images[0].get_array().shape == (len(res.trials) - 1, 3)  # t99: no bits
    with pytest.raises(ValueError, match="no bits/<layer> columns"):
        plots.bit_widths_plot(res.trials[["trial_id", "val/acc"]])


def test_exit_distribution(res: SweepResults, tmp_path: Path) -> None:
    fig = plots.exit_distribution_plot(res.trials, tmp_path / "exits.png", trial_ids=["t01"])
    _png(tmp_path / "exits.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.2, 0.3, 0.5])


def test_figures_from_results_for_the_notebooks(res: SweepResults, tmp_path: Path) -> None:
    mean, std = res.ablation("quant.weight_bits", "quant.scheme", "val/acc")
    fig = plots.ablation_figure(mean, std, tmp_path / "heat.png", value="val/acc")
    _png(tmp_path / "heat.png")
    assert fig.axes[0].images[0].get_array().shape == (3, 2)
    pareto = plots.pareto_figure(res.completed_trials(), res.objectives, front=res.pareto())
    assert len(pareto.axes[0].collections[1].get_offsets()) == len(res.pareto())
