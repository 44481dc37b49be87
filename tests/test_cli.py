"""The bitsweep console script: help, presets, and bad input exiting 2 with one readable message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator import __version__
from search_spaces import load_preset_text, preset_names


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        capture_output=True, text=True, cwd=cwd, timeout=120,
    )  # fmt: skip


def test_version_and_help() -> None:
    assert _cli("--version").stdout.strip() == f"bitsweep {__version__}"
    assert __version__ == "0.1.0"
    out = _cli().stdout
    assert "usage: bitsweep" in out
    for command in ("run", "resume", "validate", "presets", "show", "report", "submit", "jobs"):
        assert command in out


def test_presets_and_show() -> None:
    listed = _cli("presets").stdout
    assert all(name in listed for name in preset_names())
    shown = _cli("show", "br-ablation")
    assert shown.returncode == 0 and shown.stdout == load_preset_text("br-ablation")
    missing = _cli("show", "nope")
    assert missing.returncode == 2 and "unknown preset 'nope'" in missing.stderr


def test_validate_accepts_a_preset_with_overrides() -> None:
    result = _cli("validate", "demo", "train.steps=20")
    assert result.returncode == 0 and "valid sweep 'demo'" in result.stdout


def _write(tmp_path: Path, **changes: object) -> Path:
    doc = yaml.safe_load(load_preset_text("demo"))
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        doc.setdefault(section, {})[key] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("changes", "key", "fragment"),
    [
        ({"train__stesp": 10}, "train.stesp", "did you mean 'train.steps'"),
        ({"train__steps": "ten"}, "train.steps", "valid integer"),
        ({"quant__weight_bits": 1}, "quant.weight_bits", "greater than or equal to 2"),
        ({"search__space": {"train.lr": {"dist": "normal", "low": 1, "high": 2}}},
         "search.space.train.lr.dist", "'uniform'"),
        ({"data__source": "/no/such/corpus.txt"}, "data.source", "/no/such/corpus.txt"),
        ({"search__metric": "val/accuracy"}, "search.metric", "not a metric these trials report"),
    ],
)  # fmt: skip
def test_bad_sweep_files_exit_2_naming_the_key(
    tmp_path: Path, changes: dict, key: str, fragment: str
) -> None:
    path = _write(tmp_path, **changes)
    result = _cli("run", str(path), cwd=tmp_path)  # `validate` shares the same checks
    assert result.returncode == 2, result.stdout + result.stderr
    assert key in result.stderr and fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bitsweep_results").exists()  # nothing ran, nothing half-written


def test_validate_reports_a_bad_file(tmp_path: Path) -> None:
    result = _cli("validate", str(_write(tmp_path, train__stesp=10)))
    assert result.returncode == 2 and "did you mean 'train.steps'" in result.stderr


def test_bad_override_and_missing_file(tmp_path: Path) -> None:
    result = _cli("run", "demo", "train.steps", cwd=tmp_path)
    assert result.returncode == 2 and "KEY=VALUE" in result.stderr
    result = _cli("validate", str(tmp_path / "none.yaml"))
    assert result.returncode == 2 and "none.yaml does not exist" in result.stderr
    result = _cli("resume", "ghost", "--storage", str(tmp_path))
    assert result.returncode == 2 and "no sweep named 'ghost'" in result.stderr


# ---- what a newcomer meets (issue 16) --------------------------------------------------------


def test_run_without_arguments_prints_a_short_usage_with_an_example(tmp_path: Path) -> None:
    result = _cli("run", cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: bitsweep run SPEC|PRESET" in result.stderr
    assert "example:" in result.stderr and "bitsweep run demo" in result.stderr
    assert "Traceback" not in result.stderr


def test_options_and_overrides_mix_in_any_order(tmp_path: Path) -> None:
    # each reaches validation (the bad key is named), so the parser accepted the order
    result = _cli("run", "demo", "--verbose", "train.stesp=5", "--name", "x", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "did you mean 'train.steps'" in result.stderr
    result = _cli("run", "--name", "x", "demo", "train.steps=abc", "--verbose", cwd=tmp_path)
    assert result.returncode == 2 and "train.steps" in result.stderr
    result = _cli("validate", "demo", "train.steps=20", "search.num_samples=2")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "bitsweep_results").exists()


def test_a_misspelled_preset_gets_did_you_mean(tmp_path: Path) -> None:
    for command in ("run", "validate"):
        result = _cli(command, "dmeo", cwd=tmp_path)
        assert result.returncode == 2
        assert "'dmeo' is neither a sweep file nor a preset; did you mean 'demo'?" in result.stderr


def test_a_bad_sweep_name_is_refused(tmp_path: Path) -> None:
    result = _cli("run", "demo", "--name", "my sweep", cwd=tmp_path)
    assert result.returncode == 2 and "--name" in result.stderr


def test_an_unknown_tracking_scheme_fails_at_validation(tmp_path: Path) -> None:
    import os

    result = _cli("validate", "demo", "tracking.uri=htp://127.0.0.1:5000")
    assert result.returncode == 2
    assert "tracking.uri" in result.stderr and "unknown scheme 'htp://'" in result.stderr
    assert "did you mean 'http://'" in result.stderr
    env = {**os.environ, "MLFLOW_TRACKING_URI": "htp://127.0.0.1:5000"}
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", "demo"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "MLFLOW_TRACKING_URI" in result.stderr
    assert "unknown scheme 'htp://'" in result.stderr
    assert "MlflowException" not in result.stderr and "registry" not in result.stderr
    assert not (tmp_path / "bitsweep_results").exists()
