"""Sweep files and presets: validation, overrides, scenarios, objectives, errors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.spec import SweepSpecError, build_sweep, load_sweep, parse_overrides
from orchestrator.tune_space import param_space
from search_spaces import load_preset_text, preset_descriptions, preset_names

PRESETS = preset_names()  # the registry: every shipped preset
# Presets that need a value only the user knows (a local model directory): given here.
REQUIRED = {"bitnet-finetune": ["model.hf_path=/models/base"]}


def test_all_presets_are_shipped_and_described() -> None:
    assert PRESETS and all(len(d) > 20 for d in preset_descriptions().values())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert [name for name in PRESETS if f"`{name}`" not in readme] == []  # each one documented


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_validates_and_round_trips(preset: str) -> None:
    spec = load_sweep(preset, REQUIRED.get(preset, []))
    assert spec.name == preset and spec.preset == preset
    again = build_sweep(yaml.safe_load(spec.to_yaml()), preset=preset)
    assert again == spec
    from orchestrator.mixed_precision import LayerBits, per_layer_keys

    names = LayerBits(spec.run).names if per_layer_keys(spec) else ()
    space = param_space(spec.search.space, names)
    # a trial's config holds what is sampled for it, each a run-config key (the base travels
    # with the trainable)
    sampled = {key for key in spec.search.space if key != "scenario"}
    assert set(space["run_config"]) == sampled
    assert sampled <= set(spec.run.to_flat())


def test_br_ablation_is_seed_002s_matrix() -> None:
    spec = load_sweep("br-ablation")
    scenario = spec.search.space["scenario"]
    labels = [v["label"] for v in scenario.values]
    assert labels == ["W-only", "W+A stable", "W+A moving target", "A-only", "no BR"]
    assert spec.search.space["train.seed"].values == [0, 1, 2]
    assert spec.run.quant.weight_bits == 2 and spec.run.quant.act_bits == 2
    assert spec.ablation[0].rows == "scenario"


def test_multi_objective_presets() -> None:
    objectives = [(o.metric, o.mode) for o in load_sweep("bit-budget").search.objective_list]
    assert objectives == [("val/acc", "max"), ("model/bits_total", "min")]
    assert len(load_sweep("early-exit").search.objective_list) == 2


def test_overrides_are_typed_and_applied() -> None:
    spec = load_sweep(
        "demo",
        ["train.steps=50", "search.num_samples=2", "quant.scheme=hadamard",
         "search.space.train.lr.high=0.02", "search.space.quant.scheme=null",
         "search.scheduler.type=none"],
    )  # fmt: skip
    assert spec.run.train.steps == 50 and spec.search.num_samples == 2
    assert spec.run.quant.scheme == "hadamard"
    assert spec.search.space["train.lr"].high == 0.02
    assert "quant.scheme" not in spec.search.space
    assert parse_overrides(["a.b=[1, 2]", "c.d=true", "e.f=1e-3"]) == {
        "a.b": [1, 2], "c.d": True, "e.f": 1e-3,
    }  # fmt: skip


SPACE = "search.space"
BAD = [
    (["train.stepz=5"], "train.stepz", "did you mean 'train.steps'"),
    (["quant.scheme=lsq", "quant.weight_bits=11"], "quant.weight_bits", "in 2..8, got 11"),
    (["train.steps=lots"], "train.steps", "valid integer"),
    ([f"{SPACE}.train.lrr={{dist: uniform, low: 0, high: 1}}"], f"{SPACE}.train.lrr",
     "did you mean 'train.lr'"),
    ([f"{SPACE}.train.lr={{dist: gauss, low: 1, high: 2}}"], f"{SPACE}.train.lr.dist", "'uniform'"),
    ([f"{SPACE}.train.lr={{dist: uniform, low: 2, high: 1}}"], f"{SPACE}.train.lr", "below high"),
    ([f"{SPACE}.quant.act_bits={{dist: int, low: 2, high: 20}}"], f"{SPACE}.quant.act_bits",
     "value 20 is invalid"),
    ([f"{SPACE}.quant.weight_bits={{dist: int, low: 2, high: 8}}"], f"{SPACE}.quant.weight_bits",
     "not an option of quant.scheme 'ternary' (weight_bits is an option of 'lsq')"),
    (["search.metric=val/bbp"], "search.metric", "did you mean 'val/bpb'"),
    (["search.metric=val/acc"], "search.metric", "not a metric these trials report"),
    (["resources.workers_per_trial=2"], "resources", "strategy 'ddp' or 'fsdp'"),
    (["search.algorithm=bayes"], "search.algorithm", "'optuna'"),
    (["data.source=/nonexistent/corpus.txt", "task.kind=vision"], "model.arch", "conv"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "key", "fragment"), BAD)
def test_bad_sweeps_name_the_key(overrides: list[str], key: str, fragment: str) -> None:
    with pytest.raises(SweepSpecError) as info:
        load_sweep("demo", overrides)
    assert key in [k for k, _ in info.value.problems], str(info.value)
    assert fragment in str(info.value)


def test_sweep_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SweepSpecError, match="does not exist"):
        load_sweep(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(SweepSpecError, match="not valid YAML"):
        load_sweep(str(bad))
    with pytest.raises(SweepSpecError, match="neither a sweep file nor a preset"):
        load_sweep("no-such-preset")
    odd = tmp_path / "odd.yaml"
    odd.write_text(yaml.safe_dump({"serach": {}, "train": {"steps": 3}}))
    with pytest.raises(SweepSpecError, match="did you mean 'search'"):
        load_sweep(str(odd))


def test_scenarios_are_validated(tmp_path: Path) -> None:
    doc = yaml.safe_load(load_preset_text("br-ablation"))
    doc["search"]["space"]["scenario"]["values"][0]["set"]["loss.lambda_brr"] = 1.0
    with pytest.raises(SweepSpecError, match=r"scenario 'W-only'.*lambda_brr"):
        build_sweep(doc)


def test_ablation_value_must_be_reported() -> None:
    doc = yaml.safe_load(load_preset_text("demo"))
    doc["ablation"] = [{"name": "x", "rows": "quant.scheme", "value": "val/acc"}]
    with pytest.raises(SweepSpecError, match=r"ablation\[0\]\.value"):
        build_sweep(doc)


def test_optuna_refuses_grids() -> None:
    with pytest.raises(SweepSpecError, match="optuna does not search grids"):
        load_sweep("demo", ["search.space.train.seed={dist: grid, values: [0, 1]}"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search.scheduler.type=optuna-sh", "search.algorithm=random"], "set algorithm: optuna"),
        (["search.scheduler.type=pbt"], "set algorithm: random"),
        (["search.scheduler.type=pbt", "search.algorithm=random",
          "search.scheduler.mutations=[train.nope]"], "not a key of search.space"),
        (["search.scheduler.mutations=[train.lr]"], "applies to scheduler.type 'pbt' only"),
        (["search.bits_budget=1000", "search.algorithm=random"], "bits_budget is an Optuna"),
        (["search.space.train.lr={dist: per_layer, values: [2, 4]}"], "quant.layer_bits only"),
        (["search.space.quant.layer_bits={dist: per_layer, values: [1, 4]}"], "in 2..8"),
    ],
)  # fmt: skip
def test_scheduler_and_search_options_are_validated(overrides: list[str], message: str) -> None:
    with pytest.raises(SweepSpecError, match=message):
        load_sweep("demo", overrides)


def test_optuna_pruners_take_one_objective() -> None:
    with pytest.raises(SweepSpecError, match="judges one objective"):
        load_sweep("bit-budget", ["search.scheduler.type=optuna-hyperband"])


def test_per_layer_space_expands_to_one_dimension_per_layer() -> None:
    from orchestrator.mixed_precision import LayerBits

    spec = load_sweep("mixed-precision")
    layers = LayerBits(spec.run)
    space = param_space(spec.search.space, layers.names)
    per_layer = space["run_config"]["quant.layer_bits"]
    assert sorted(per_layer) == sorted(layers.names) == ["head", "layers.0", "layers.1"]
    assert all(d.categories == [2, 3, 4, 6, 8] for d in per_layer.values())
    # more bits, more model: the budget constraint measures what the trial will report
    assert layers.bits_total(dict.fromkeys(layers.names, 2)) < layers.bits_total(
        dict.fromkeys(layers.names, 8)
    )
    with pytest.raises(ValueError, match="layer names"):
        param_space(spec.search.space)


# ---- overrides meet the search space --------------------------------------------------------


def _notes(preset: str, overrides: list[str]) -> tuple[Any, list[str]]:
    notes: list[str] = []
    return load_sweep(preset, overrides, notify=notes.append), notes


def test_a_pinned_key_is_one_fixed_value_in_every_trial() -> None:
    spec, notes = _notes("scaleup", ["growth.improve_thresh=100", "growth.strategy=depth,width"])
    assert notes == [
        "growth.improve_thresh=100 pins a searched key (removed from search.space)",
        "growth.strategy=depth,width pins a searched key (removed from search.space)",
    ]
    space = param_space(spec.search.space)["run_config"]
    base = spec.run.to_flat()  # every trial's, under its sampled values
    assert base["growth.improve_thresh"] == 100 and base["growth.strategy"] == ["depth", "width"]
    assert "growth.improve_thresh" not in space and "growth.strategy" not in space
    assert hasattr(space["growth.window"], "sample")  # the rest is still searched
    # overrides that do not touch a searched key say nothing
    assert _notes("scaleup", ["train.steps=10"])[1] == []


def test_pinning_a_key_the_scenarios_set_removes_it_from_each_scenario() -> None:
    spec, notes = _notes("br-ablation", ["loss.lambda_br=0.5"])
    assert notes == [
        "loss.lambda_br=0.5 pins a key the scenarios set (removed from every "
        "search.space.scenario set)"
    ]
    sets = [v["set"] for v in spec.search.space["scenario"].values]
    assert len(sets) == 5 and not any("loss.lambda_br" in s for s in sets)
    assert all("loss.lambda_br_act" in s for s in sets)
    assert spec.run.loss.lambda_br == 0.5


def test_drop_pin_and_re_search_compose_in_order() -> None:
    # pinned, then dropped: nothing left to drop, no error
    spec, _ = _notes("scaleup", ["growth.window=1", "search.space.growth.window=null"])
    assert "growth.window" not in spec.search.space and spec.run.growth.window == 1
    # pinned, then searched again over a new range
    spec, _ = _notes(
        "scaleup", ["growth.window=1", "search.space.growth.window={dist: int, low: 2, high: 4}"]
    )
    assert spec.search.space["growth.window"].high == 4
    # emptied, then one key searched
    spec, notes = _notes("scaleup", ["search.space={}", "search.space.train.lr={dist: "
                                     "loguniform, low: 0.001, high: 0.01}"])  # fmt: skip
    assert list(spec.search.space) == ["train.lr"] and notes == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search.space=3"], "search.space: give a mapping"),
        (["search.space.train.lr=null"], "'train.lr' is not searched"),
        (["search.space={}", "search.scheduler.type=pbt", "search.algorithm=random"],
         "needs a uniform, loguniform or int key"),
    ],
)  # fmt: skip
def test_bad_space_overrides_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(SweepSpecError, match=message):
        load_sweep("scaleup", overrides, notify=None)


def test_an_emptied_space_says_every_trial_runs_the_fixed_config() -> None:
    spec, notes = _notes("scaleup", ["search.space=null"])
    assert spec.search.space == {} and spec.search.num_samples == 8
    assert notes == [
        "search.space is empty: all 8 trials run the same fixed config "
        "(search.num_samples=1 runs it once)"
    ]
    assert _notes("scaleup", ["search.space={}", "search.num_samples=1"])[1] == []
    from orchestrator.runner import expected_trials

    assert expected_trials(spec) == 8
