"""``make results`` end to end at the CI scale: every section and figure, from a real MLflow
server, kept on the studies' parent runs (orchestrator.publish.book)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TITLES = [
    "Seed 002: bin regularization at 2 bits",
    "Seed 003: gradual full precision -> ternary",
    "Seed 001: Hadamard x early exit x layer dropout",
    "Seed 000: accuracy against total bits",
    "Seed 004: progressive scale-up and the bit-level LM",
    "The search",
]
FIGURES = {
    "seed002_br_scenarios", "seed003_gradual", "seed001_exit_tradeoff", "seed000_fronts",
    "seed000_learned_bits", "seed004_growth", "seed004_telemetry", "seed004_reversible_memory",
}  # fmt: skip


@pytest.fixture(scope="module")
def published(tmp_path_factory, mlflow_server):
    """``make results`` at results/scale-ci.yaml into a temporary folder, on the session's
    MLflow server."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed: the README's commands need it")
    out = tmp_path_factory.mktemp("published")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    command = [
        "make", "--no-print-directory", "results",
        "RESULTS_SCALE=results/scale-ci.yaml",
        f"RESULTS_OUT={out / 'RESULTS.md'}",
        f"RESULTS_FIGURES={out / 'figures'}",
        f"RESULTS_STORE={out / 'store'}",
        f"RESULTS_ARGS=--tracking-uri {mlflow_server}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, (out / "RESULTS.md").read_text(), mlflow_server


def test_every_section_and_figure_is_produced(published) -> None:
    out, text, _ = published
    for title in TITLES:
        assert f"\n## {title}\n" in text
    assert text.count("_Command: `make results RESULTS_SCALE=results/scale-ci.yaml`") == len(TITLES)
    linked = set(re.findall(r"\]\(figures/(\w+)\.png\)", text))
    assert linked == FIGURES
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    assert not list(out.glob("results-figures-*")), "the staging folder is left behind"
    assert "not in this scale file" in text  # CIFAR-10: no local batches, said so


def test_the_early_exit_cells_train_with_exits(published) -> None:
    """A cell must run what its label says: the early-exit cells differ from the no-exit ones."""
    _, text, _ = published
    rows = dict(re.findall(r"\| ((?:early|no) exit, \w+, layer dropout [\d.]+) \| ([\d.]+)", text))
    assert len(rows) == 8
    for cell, loss in rows.items():
        if cell.startswith("early"):
            assert loss != rows[cell.replace("early exit", "no exit")], cell


def test_each_study_keeps_its_section_on_its_parent_run(published) -> None:
    from mlflow import MlflowClient

    from orchestrator.results import load_sweep_results

    _, _, uri = published
    parent = load_sweep_results(
        "results-br-scenarios", tracking_uri=uri, experiment="bitsweep-results"
    ).parent_run_id
    files = {a.path for a in MlflowClient(uri).list_artifacts(parent, "results")}
    assert {"results/seed002.md", "results/seed002_br_scenarios.png"} <= files


def test_report_only_regenerates_the_same_numbers(published, tmp_path) -> None:
    _, text, uri = published
    again = tmp_path / "RESULTS.md"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "orchestrator.publish", "--report-only",
         "--scale", "results/scale-ci.yaml", "--out", str(again), "--figures",
         str(tmp_path / "figures"), "--tracking-uri", uri, "--store", str(tmp_path / "store")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]

    def numbers(t: str) -> list[str]:
        return [line for line in t.splitlines() if line.startswith("|")]

    assert numbers(again.read_text()) == numbers(text)


def test_a_bad_scale_file_is_one_line_and_exit_2(tmp_path) -> None:
    bad = tmp_path / "scale.yaml"
    bad.write_text("studies: {gradual: {widht: [1]}}\n")
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "orchestrator.publish", "--scale",
         str(bad), "--out", str(tmp_path / "R.md"), "--store", str(tmp_path / "store")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "studies.gradual.widht" in done.stderr
    assert not (tmp_path / "R.md").exists()
