"""``bitsweep report`` on hand-made sweeps in a local sqlite store: through the real CLI (exit
codes, no tracebacks) and in process (the text of each section, the PNG files)."""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from handmade_sweeps import SAMPLED_KEY, Handmade, completed, write_lm_sweep, write_sweep

from orchestrator.report import ReportError, format_matrix, print_report
from orchestrator.results import load_sweep_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Handmade:
    root = tmp_path_factory.mktemp("report-store")
    return write_sweep(f"sqlite:///{root / 'mlflow.db'}")


# What the ``bitsweep`` console script runs. Not ``python -m orchestrator.cli``: as ``__main__``
# that module's UserError is a second class, so the errors of other modules would exit 1.
CONSOLE_SCRIPT = "import sys; from orchestrator.cli import main; sys.exit(main())"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT, "report", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _cell(made: Handmade, bits: int, scheme: str) -> str:
    """The matrix cell text the report must print, computed here with numpy."""
    values = np.array(
        [
            t.final("val/acc")
            for t in completed(made)
            if (t.params["quant.weight_bits"], t.params["quant.scheme"]) == (bits, scheme)
        ]
    )
    return f"{values.mean():.4g} ± {values.std(ddof=1):.4g} (n={len(values)})"


def test_cli_report_prints_the_matrix_and_writes_plots(made: Handmade, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    done = _cli("abl", "--tracking-uri", made.uri, "--experiment", made.experiment,
                "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"sweep abl: parent run {made.parent_run_id}" in text
    assert "ablation bits_by_scheme: val/acc by quant.weight_bits x quant.scheme" in text
    for bits, scheme in itertools.product([2, 4], ["lsq", "ternary"]):
        assert _cell(made, bits, scheme) in text
    lines = text.splitlines()
    row8 = next(line for line in lines if line.strip().startswith("8 "))
    assert row8.split() == ["8", "-", "-"]  # the failed trial's row: no value, no count
    assert "ablation by_seed: model/bits_total by train.seed" in text
    assert "Pareto front (" in text and "best val/acc:" in text
    assert "t99: ValueError: loss is nan" in text
    expected = {f"abl_{kind}.png" for kind in ("ablation_bits_by_scheme", "ablation_by_seed",
                "pareto", "learning_curves", "bit_widths", "exit_layers", "growth",
                "importance", "parallel_coordinates")}  # fmt: skip
    assert "parameter importance for val/acc (fANOVA over finished trials):" in text
    assert {p.name for p in out.iterdir()} == expected
    for name in expected:
        assert str(out / name) in text  # every path is printed
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_cli_report_by_parent_run_id(made: Handmade, tmp_path: Path) -> None:
    done = _cli(made.parent_run_id, "--tracking-uri", made.uri, "--out", str(tmp_path),
                cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"sweep abl: parent run {made.parent_run_id}" in done.stdout


def test_cli_report_unknown_sweep_exits_2_naming_it(made: Handmade, tmp_path: Path) -> None:
    done = _cli("no-such-sweep", "--tracking-uri", made.uri, "--experiment", made.experiment,
                cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "no sweep named 'no-such-sweep'" in done.stderr and "abl" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    done = _cli("abl", "--tracking-uri", missing, cwd=tmp_path)
    assert done.returncode == 2 and missing in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "missing.db").exists()


def test_report_in_process_sections(made: Handmade, tmp_path: Path) -> None:
    stream = io.StringIO()
    code = print_report(
        "abl", tracking_uri=made.uri, experiment=made.experiment, out_dir=tmp_path, stream=stream
    )
    assert code == 0
    text = stream.getvalue()
    front = load_sweep_results("abl", tracking_uri=made.uri, experiment=made.experiment).pareto()
    section = text.split("Pareto front (")[1].split("\n\n")[0]
    assert section.startswith(f"{len(front)} of 12 completed trials)")
    assert sorted(line.split()[0] for line in section.splitlines()[2:]) == sorted(front["trial_id"])
    best = max(completed(made), key=lambda t: t.final("val/acc"))
    assert f"best val/acc: {best.final('val/acc'):.4g} (trial {best.trial_id}" in text
    matrix = text.split("ablation bits_by_scheme: ")[1]
    assert matrix.splitlines()[1] == "each cell: mean ± std over train.seed (n per cell)"


def test_report_says_what_a_cell_averages_and_names_marginalized_keys(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made = write_lm_sweep(uri)
    stream = io.StringIO()
    print_report("lm", tracking_uri=uri, experiment=made.experiment, out_dir=tmp_path,
                 stream=stream)  # fmt: skip
    text = stream.getvalue()
    section = text.split("\nablation layer_by_warmup: ")[1].split("\n\n")[0].splitlines()
    assert section[0] == "val/bpb by scenario x schedule.lambda_warmup_frac (finished trials only)"
    assert section[1] == (
        "each cell: mean ± std over train.seed (n per cell); rows split by "
        f"model.rmsnorm_post_attn; marginalized over sampled {SAMPLED_KEY}"
    )
    body = section[2:]
    assert len(body) == 2 + 6  # two header lines (cols, rows), then 3 scenarios x 2 norms
    row = next(line for line in body if line.startswith("BitLinear · rmsnorm_post_attn=True "))
    for warmup in (0.0, 0.4):
        values = np.array([t.final("val/bpb") for t in made.trials.values()
                           if (t.params["scenario"], t.params["model.rmsnorm_post_attn"],
                               t.params["schedule.lambda_warmup_frac"]) == ("BitLinear", True,
                                                                            warmup)])  # fmt: skip
        assert f"{values.mean():.4g} ± {values.std(ddof=1):.4g} (n=2)" in row
    assert "ablation layer_by_post_attn_norm: " in text
    assert (tmp_path / "lm_ablation_layer_by_warmup.png").read_bytes()[:8] == PNG_MAGIC


def test_report_of_a_sweep_without_spec_reads_stored_matrices(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made = write_sweep(uri, name="nospec", spec=False)
    stream = io.StringIO()
    print_report("nospec", tracking_uri=uri, experiment=made.experiment, out_dir=tmp_path,
                 stream=stream)  # fmt: skip
    text = stream.getvalue()
    # the tracker's stored cells: the failed trial keeps its cell, not its partial value
    assert "ablation bits_by_scheme: val/acc by quant.weight_bits x quant.scheme" in text
    assert "each cell: mean ± std over every other key" in text  # no search space logged
    assert _cell(made, 2, "lsq") in text and "0.99 (n=" not in text


def test_unwritable_output_folder_is_a_user_error(made: Handmade, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ReportError, match="cannot write the plots"):
        print_report("abl", tracking_uri=made.uri, experiment=made.experiment,
                     out_dir=blocker / "sub", stream=io.StringIO())  # fmt: skip


def test_format_matrix_cells() -> None:
    import pandas as pd

    mean = pd.DataFrame([[1.0, np.nan]], index=pd.Index(["a"], name="r"), columns=["x", "y"])
    std = pd.DataFrame([[0.5, np.nan]], index=mean.index, columns=mean.columns)
    count = pd.DataFrame([[2, 0]], index=mean.index, columns=mean.columns)
    text = format_matrix(mean, std, count)
    assert "1 ± 0.5 (n=2)" in text and text.splitlines()[-1].split()[-1] == "-"


def test_report_of_a_sweep_without_trials(tmp_path: Path) -> None:
    from orchestrator.tracking import SweepTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    SweepTracker("empty", tracking_uri=uri, objectives=[("val/acc", "max")]).start()
    res = load_sweep_results("empty", tracking_uri=uri)
    assert res.trials.empty and list(res.trials.columns[:4]) == ["trial_id", "run_id", "status",
                                                                 "error"]  # fmt: skip
    assert res.metrics == [] and res.summary().empty
    stream = io.StringIO()
    assert print_report("empty", tracking_uri=uri, out_dir=tmp_path, stream=stream) == 0
    assert "0 trials" in stream.getvalue() and "no trials" in stream.getvalue()
