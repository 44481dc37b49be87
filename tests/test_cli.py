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
        ({"quant__act_bits": 1}, "quant.act_bits", "act_bits must be in 2..16"),
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


# ---- errors, imports and what `validate` meets (issue 14) ------------------------------------


@pytest.mark.parametrize("text", ["", "# a sweep, one day\n", "---\n"])
def test_an_empty_sweep_file_says_it_is_empty(tmp_path: Path, text: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    for command in ("validate", "run"):
        result = _cli(command, str(path), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"sweep file {path} is empty" in result.stderr
        assert "give metric and mode" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "bitsweep_results").exists()


# What `bitsweep validate` imports, seen from inside the process that ran it.
_IMPORTED_BY_VALIDATE = (
    "import sys; from orchestrator.cli import main; code = main(sys.argv[1:]); "
    "print('exit', code, 'imported', *[m for m in ('ray', 'torch') if m in sys.modules])"
)


def _validate_imports(*args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTED_BY_VALIDATE, "validate", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    last = result.stdout.strip().splitlines()[-1].split()
    assert last[:2] == ["exit", "0"], result.stdout + result.stderr
    return last[3:]


@pytest.mark.parametrize(
    "args",
    [("demo",), ("demo", "train.steps=20", "search.num_samples=2", "quant.scheme=ternary")],
)
def test_validate_imports_no_ray(args: tuple[str, ...]) -> None:
    assert "ray" not in _validate_imports(*args)


@pytest.mark.parametrize(
    "args",
    [("demo",), ("demo", "train.steps=20", "search.num_samples=2", "quant.scheme=ternary")],
)
def test_validate_imports_no_torch(args: tuple[str, ...]) -> None:
    assert "torch" not in _validate_imports(*args)


def test_every_user_error_derives_from_one_of_the_two_bases() -> None:
    from orchestrator.digests import TamperedStateError
    from orchestrator.errors import NoSavedSweepError, UserError
    from orchestrator.jobs import JobError
    from orchestrator.locking import SweepLockedError
    from orchestrator.preflight import StateFileError
    from orchestrator.report import ReportError
    from orchestrator.results import ResultsError
    from orchestrator.run_layout import SweepLookupError
    from orchestrator.spec import SweepSpecError
    from orchestrator.tracking_uri import TrackingUnreachableError
    from trainables.config import ConfigError
    from trainables.data import DataError
    from trainables.errors import UserInputError
    from trainables.export import ExportError
    from trainables.quant import CheckpointError

    assert issubclass(UserError, UserInputError)
    core = (ConfigError, SweepSpecError, DataError, ExportError, CheckpointError)
    orchestrator = (JobError, SweepLockedError, TamperedStateError, StateFileError, ReportError,
                    ResultsError, TrackingUnreachableError, NoSavedSweepError,
                    SweepLookupError)  # fmt: skip
    assert all(issubclass(cls, UserInputError) for cls in core)
    assert all(issubclass(cls, UserError) for cls in orchestrator)
    # the builtin bases callers catch stay
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(SweepLockedError, RuntimeError) and issubclass(NoSavedSweepError, OSError)


# ---- overrides meet the search space (issue 14) -----------------------------------------------


def test_an_override_of_a_searched_key_pins_it() -> None:
    from orchestrator.spec import load_sweep

    result = _cli("validate", "scaleup", "growth.improve_thresh=100")
    note = "growth.improve_thresh=100 pins a searched key (removed from search.space)"
    assert result.returncode == 0 and note in result.stderr, result.stderr
    assert "2 searched keys" in result.stdout  # scaleup searches three
    spec = load_sweep("scaleup", ["growth.improve_thresh=100"], notify=None)
    assert spec.run.growth.improve_thresh == 100
    assert "growth.improve_thresh" not in spec.search.space
    assert set(spec.search.space) == {"growth.window", "growth.strategy"}


def test_search_space_key_null_drops_a_searched_key_without_pinning() -> None:
    from orchestrator.spec import load_sweep

    result = _cli("validate", "scaleup", "search.space.growth.improve_thresh=null")
    assert result.returncode == 0, result.stderr
    assert "2 searched keys" in result.stdout and "pins" not in result.stderr
    spec = load_sweep("scaleup", ["search.space.growth.improve_thresh=null"], notify=None)
    assert "growth.improve_thresh" not in spec.search.space
    assert spec.run.growth.improve_thresh == 0.02  # the file's value, unpinned
    typo = _cli("validate", "scaleup", "search.space.growth.improve_tresh=null")
    assert typo.returncode == 2 and "search.space.growth.improve_tresh" in typo.stderr
    assert "is not searched" in typo.stderr and "growth.improve_thresh" in typo.stderr


def test_an_empty_search_space_override_empties_it() -> None:
    from orchestrator.spec import load_sweep

    result = _cli("validate", "scaleup", "search.space={}")
    assert result.returncode == 0, result.stderr
    assert "0 searched keys" in result.stdout
    assert "search.space is empty: all 8 trials run the same fixed config" in result.stderr
    assert load_sweep("scaleup", ["search.space={}"], notify=None).search.space == {}


# ---- objectives are the metrics trials report, declared once (issue 14) ----------------------


def _with_objective(tmp_path: Path, preset: str, metric: str) -> Path:
    """The preset as a sweep file whose one objective is ``metric``."""
    doc = yaml.safe_load(load_preset_text(preset))
    doc["search"].pop("objectives", None)
    doc["search"].update(metric=metric, mode="min")
    path = tmp_path / f"{preset}-{metric.replace('/', '_')}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("preset", "metric"),
    [("early-exit", "model/layers_dropped"),  # layer dropout 0.1
     ("bit-budget", "bits/layers.0"),  # the adaptive scheme's learned bit-width of one layer
     ("early-exit", "route/exit_frac/4")],  # the share of tokens exiting at the last layer
)  # fmt: skip
def test_validate_accepts_an_objective_the_trials_report(
    tmp_path: Path, preset: str, metric: str
) -> None:
    result = _cli("validate", str(_with_objective(tmp_path, preset, metric)))
    assert result.returncode == 0, result.stderr
    assert "valid sweep" in result.stdout


def test_validate_refuses_an_undeclared_objective_naming_the_declared_ones(
    tmp_path: Path,
) -> None:
    result = _cli("validate", str(_with_objective(tmp_path, "bit-budget", "bits_total")))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "search.metric" in result.stderr and "no such metric is declared" in result.stderr
    assert "did you mean 'model/bits_total'" in result.stderr
    assert "bits/<layer>" in result.stderr and "val/acc" in result.stderr  # the declared ones
    # a declared metric that this sweep's trials do not report: which runs report it
    result = _cli("validate", str(_with_objective(tmp_path, "demo", "model/layers_dropped")))
    assert result.returncode == 2 and "runs report it with model.layer_dropout > 0" in result.stderr


# --- the quant section is the chosen scheme's own options (issue 14) ---------------------------


def test_validate_refuses_bit_bounds_out_of_order_naming_both_keys() -> None:
    # the ternary scheme (demo's) takes neither key: both are named, with what ternary takes
    result = _cli("validate", "demo", "quant.min_bits=4", "quant.init_bits=3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "quant.min_bits" in result.stderr and "quant.init_bits" in result.stderr
    assert "not an option of quant.scheme 'ternary'" in result.stderr
    # the adaptive scheme takes them: its rule min_bits <= init_bits is checked at validation
    result = _cli("validate", "demo", "quant.scheme=adaptive", "quant.min_bits=4",
                  "quant.init_bits=3")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "quant.init_bits: init_bits must be in [min_bits, max_bits] = [4, 8]" in result.stderr


def test_a_key_the_scheme_does_not_take_exits_2_naming_it_and_the_scheme() -> None:
    # BitLinear (ternary) has no Hadamard block: block_size is the hadamard scheme's option
    result = _cli("validate", "demo", "quant.block_size=16")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "quant.block_size: not an option of quant.scheme 'ternary'" in result.stderr
    assert "block_size is an option of 'hadamard'" in result.stderr
    assert "takes: scheme, keep_head, act_bits, input_norm, eps" in result.stderr


def test_every_option_of_the_scheme_can_be_set_and_reaches_the_layers() -> None:
    from orchestrator.spec import load_sweep
    from trainables.build import build_model, initial_architecture
    from trainables.quant import BitLinear, HBitLinear

    args = ("demo", "quant.scheme=hadamard", "quant.block_size=16", "quant.eps=1e-6")
    result = _cli("validate", *args)
    assert result.returncode == 0, result.stderr
    spec = load_sweep(args[0], args[1:])
    model = build_model(spec.run, initial_architecture(spec.run, None))  # type: ignore[arg-type]
    hadamard = [m for m in model.modules() if isinstance(m, HBitLinear)]
    ternary = [m for m in model.modules() if isinstance(m, BitLinear)]
    assert hadamard and all(m.block_size == 16 for m in hadamard)  # 64 without the cap
    assert ternary and all(m.eps == 1e-6 for m in ternary)
