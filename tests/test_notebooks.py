"""The notebooks: stored without outputs, parameterized by environment variables, built on the
results API only; and (slow) executed end to end with nbclient in a real Jupyter kernel against
tiny real sweeps logged to a real ``mlflow server``, every figure written."""

from __future__ import annotations

import ast
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from test_sweeps import TINY

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPERIMENT = "notebooks"
ENV_VARS = ("BITSWEEP_TRACKING_URI", "BITSWEEP_SWEEP", "BITSWEEP_EXPERIMENT", "BITSWEEP_FIGURES")
ALLOWED_IMPORTS = {
    "os", "pathlib", "orchestrator", "orchestrator.results", "orchestrator.plots",
    "orchestrator.front_compare",
}  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The tiny sweeps the notebooks run against (the presets' names are the sweep names).
SWEEPS: dict[str, list[str]] = {
    "demo": TINY["demo"],
    "bit-budget": TINY["bit-budget"],
    # two scenarios x two seeds: the matrix has a standard deviation over seeds
    "br-ablation": [*TINY["br-ablation"], "search.space.train.seed.values=[0, 1]"],
    "early-exit": TINY["early-exit"],
    # a plateau threshold this high makes the model grow within 12 steps
    "scaleup": [*TINY["scaleup"], "search.space.growth.improve_thresh.low=0.5",
                "search.space.growth.improve_thresh.high=0.9", "search.space.growth.window=null",
                "growth.window=1"],
}  # fmt: skip
# (notebook, sweep, the figures it must write)
RUNS = [
    ("analysis.ipynb", "demo", {"learning_curves.png", "ablation_scheme.png"}),
    ("analysis.ipynb", "bit-budget", {"pareto.png", "ablation_bits_by_input_quant.png",
                                      "learning_curves.png", "bit_widths.png"}),
    ("br_ablation.ipynb", "br-ablation", {"br_matrix.png", "br_by_seed.png", "br_curves.png"}),
    ("bit_budget.ipynb", "bit-budget", {"bit_budget_pareto.png", "bits_by_input_quant.png",
                                        "bit_widths_front.png", "bit_widths_all.png",
                                        "bit_widths_curves.png"}),
    ("early_exit.ipynb", "early-exit", {"exit_pareto.png", "exit_layers.png", "exit_curves.png"}),
    ("scaleup.ipynb", "scaleup", {"growth_timeline.png", "scaleup_curves.png"}),
]  # fmt: skip


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _code(nb: Any) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_every_notebook_is_run_by_the_slow_test() -> None:
    assert {p.name for p in _notebooks()} == {name for name, _, _ in RUNS}
    assert {"analysis.ipynb", "br_ablation.ipynb", "bit_budget.ipynb"} <= {
        p.name for p in _notebooks()
    }


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_notebooks_are_stored_clean_and_parameterized(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "stored with outputs"
    first = _code(nb)[0]
    for var in ENV_VARS:
        assert f'os.environ.get("{var}"' in first, var
    # a short narrative before each analysis cell
    kinds = [c.cell_type for c in nb.cells]
    assert kinds[0] == "markdown"
    assert all(kinds[i - 1] == "markdown" for i, k in enumerate(kinds) if k == "code" and i > 1)
    # analysis goes through the results API and the plots, never re-implemented in cells
    for source in _code(nb):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {node.module or ""}
            else:
                continue
            assert names <= ALLOWED_IMPORTS, names
        assert "MlflowClient" not in source and "import mlflow" not in source


# ---- executed against real sweeps ------------------------------------------------------------


@pytest.fixture(scope="module")
def sweeps(mlflow_server: str, ray_session: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Run every tiny sweep once into the server's ``notebooks`` experiment; yields its URI."""
    from orchestrator.runner import run_sweep
    from orchestrator.spec import load_sweep

    storage = tmp_path_factory.mktemp("notebook-sweeps")
    for preset, overrides in SWEEPS.items():
        where = [f"tracking.uri={mlflow_server}", f"tracking.experiment={EXPERIMENT}",
                 f"storage.path={storage}"]  # fmt: skip
        outcome = run_sweep(load_sweep(preset, [*overrides, *where]), stream=None)
        assert outcome.failed == 0, outcome.trials[["trial_id", "error"]]
        if preset == "scaleup":  # the growth timeline has growth to show
            assert (outcome.trials["growth/stage"] > 0).any()
    return mlflow_server


@pytest.fixture(scope="module")
def kernel() -> str:
    """The ``python3`` kernel, checked to run this interpreter (the venv with this checkout)."""
    import nbclient
    from jupyter_client.kernelspec import find_kernel_specs

    assert "python3" in find_kernel_specs(), "no python3 kernel: pip install ipykernel"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys, orchestrator\nprint(sys.executable)")]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    ran = nb.cells[0].outputs[0]["text"].strip()
    assert Path(ran).resolve() == Path(sys.executable).resolve(), ran
    return "python3"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "sweep", "figures"), RUNS, ids=[f"{n}-{s}" for n, s, _ in RUNS])
def test_notebook_runs_against_a_real_sweep(
    name: str,
    sweep: str,
    figures: set[str],
    sweeps: str,
    kernel: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import nbclient

    out = tmp_path / "figures"
    monkeypatch.setenv("BITSWEEP_TRACKING_URI", sweeps)
    monkeypatch.setenv("BITSWEEP_SWEEP", sweep)
    monkeypatch.setenv("BITSWEEP_EXPERIMENT", EXPERIMENT)
    monkeypatch.setenv("BITSWEEP_FIGURES", str(out))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    started = time.monotonic()
    # any cell error raises CellExecutionError (with the cell and traceback) and fails the test
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name=kernel, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    elapsed = time.monotonic() - started
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"], [
        o.text for o in outputs if o.output_type == "stream"
    ]
    shown = sum("image/png" in o.get("data", {}) for o in outputs)
    assert shown >= len(figures)  # figures display inline, not only on disk
    assert f"SweepResults('{sweep}'" in str(outputs)
    written = {p.name for p in out.iterdir()}
    assert figures <= written, f"{sorted(figures - written)} missing; wrote {sorted(written)}"
    for figure in written:
        data = (out / figure).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, figure
    assert elapsed < 120, f"{name} took {elapsed:.0f} s"
