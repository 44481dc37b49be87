"""The scale files of ``make results`` and the sweeps they make (orchestrator.publish)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.publish.run_studies import grown_size, study_spec
from orchestrator.publish.scale import PublishError, StudyScale, load_scale
from orchestrator.publish.studies import STUDIES, STUDY_NAMES
from tests.hf_fixtures import save_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
SCALE_FILES = [ROOT / "results" / "scale.yaml", ROOT / "results" / "scale-ci.yaml"]


@pytest.mark.parametrize("path", SCALE_FILES, ids=lambda p: p.name)
def test_the_shipped_scale_files_validate(path: Path) -> None:
    scale = load_scale(path, STUDY_NAMES)
    assert scale.studies, "a scale file that runs nothing publishes nothing"


def test_the_ci_scale_runs_every_study_that_needs_no_local_data() -> None:
    scale = load_scale(SCALE_FILES[1], STUDY_NAMES)
    assert set(STUDY_NAMES) - set(scale.studies) == {"br_scenarios_cifar"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("studies: {br_scenario: {}}", ["unknown study 'br_scenario'", "br_scenarios"]),
        ("studies: {gradual: {widths: []}}", ["studies.gradual.widths"]),
        ("studies: {gradual: {seed: [1]}}", ["studies.gradual.seed"]),
        ("studies: [", ["not valid YAML"]),
    ],
)
def test_a_bad_scale_file_is_one_line_naming_the_key(tmp_path, text, words) -> None:
    path = tmp_path / "scale.yaml"
    path.write_text(text)
    with pytest.raises(PublishError) as caught:
        load_scale(path, STUDY_NAMES)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message


def test_a_missing_scale_file_says_which_to_pass(tmp_path) -> None:
    with pytest.raises(PublishError, match=re.escape("results/scale.yaml")):
        load_scale(tmp_path / "nope.yaml", STUDY_NAMES)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("base"), tokenizer=False)


@pytest.mark.parametrize("study", STUDIES, ids=lambda s: s.name)
def test_every_study_builds_a_valid_sweep(study, base_model, tmp_path) -> None:
    context = {"base_model": base_model, "grown_size": {"model.n_layers": 2, "model.d_model": 64}}
    if study.name == "br_scenarios_cifar":
        scale = StudyScale(set={"data.path": str(tmp_path)})
    else:
        scale = StudyScale()
    spec = study_spec(study, scale, context, tracking_uri="sqlite:///x.db", storage="runs")
    if study.search is not None:
        assert spec.search.algorithm == "grid"
        assert (
            spec.search.space["train.seed"].values
            == scale.seeds[: len(spec.search.space["train.seed"].values)]
        )


def test_the_early_exit_cells_keep_their_exits() -> None:
    """The study's base run has no exits; its "early exit" cells put the preset's back (an
    override of the base would have pinned them away from every cell)."""
    study = next(s for s in STUDIES if s.name == "early_exit")
    spec = study_spec(study, StudyScale(), {}, tracking_uri="sqlite:///x.db", storage="runs")
    assert spec.run.model.early_exit is False and spec.run.loss.lambda_r == 0.0
    cells = {v["label"]: v["set"] for v in spec.search.space["scenario"].values}
    assert cells["early exit"]["model.early_exit"] is True
    assert cells["early exit"]["loss.lambda_r"] > 0 and cells["early exit"]["loss.lambda_exit"] > 0
    assert cells["no exit"] == {}


def test_a_scale_override_reaches_every_cell() -> None:
    study = next(s for s in STUDIES if s.name == "gradual")
    scale = StudyScale(seeds=[3, 4], widths=[32, 64], set={"train.steps": 7})
    spec = study_spec(study, scale, {}, tracking_uri="sqlite:///x.db", storage="runs")
    assert spec.run.train.steps == 7
    assert spec.search.space["model.d_model"].values == [32, 64]
    assert spec.search.space["train.seed"].values == [3, 4]


class _Grown:
    def __init__(self, rows: list[dict]) -> None:
        import pandas as pd

        self.table = pd.DataFrame(rows)

    def completed_trials(self):
        return self.table


def test_the_scratch_size_is_the_size_most_grown_runs_ended_at() -> None:
    nan = float("nan")
    grown = _Grown([
        {"growth/n_layers": 3.0, "growth/d_model": 64.0, "growth/seq_len": 32.0},
        {"growth/n_layers": 3.0, "growth/d_model": 64.0, "growth/seq_len": 32.0},
        {"growth/n_layers": nan, "growth/d_model": nan, "growth/seq_len": nan},
    ])  # fmt: skip
    preset = {"n_layers": 1, "d_model": 32, "seq_len": 32}
    assert grown_size(grown, preset) == {"model.n_layers": 3, "model.d_model": 64,
                                         "model.seq_len": 32}  # fmt: skip
    never = _Grown([{"growth/n_layers": nan, "growth/d_model": nan, "growth/seq_len": nan}])
    assert grown_size(never, preset) == {"model.n_layers": 1, "model.d_model": 32,
                                         "model.seq_len": 32}  # fmt: skip
