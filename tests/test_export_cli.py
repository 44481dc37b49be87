"""``bitsweep export`` (orchestrator/exporting.py) on the checkpoint of a real training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from orchestrator.cli import main  # noqa: E402
from trainables.config import RunConfig  # noqa: E402
from trainables.loop import PACKED_DIR, train  # noqa: E402
from trainables.quant import load_packed_checkpoint  # noqa: E402
from trainables.reporting import ListReporter  # noqa: E402

RUN = {
    "model": {"d_model": 256, "n_layers": 1, "n_heads": 4, "d_ff": 512, "seq_len": 16},
    "data": {"eval_batches": 1},
    "train": {"steps": 4, "eval_every": 4, "batch_size": 4, "lr": 3e-3},
    "schedule": {"lambda_warmup_frac": 0.5},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The final checkpoint of a 4-step ternary byte-LM run (with its packed/ model)."""
    root = tmp_path_factory.mktemp("run")
    reporter = ListReporter(root)
    train(RunConfig.from_dict(RUN), reporter=reporter)
    final = reporter.checkpoints[-1]
    assert (final / PACKED_DIR / "manifest.json").is_file()
    return final


def test_export_gguf_from_a_trained_checkpoint(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gguf"
    assert main(["export", str(checkpoint), "--format", "gguf-tq2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "TQ2_0 6 tensors 2.062 bits/weight" in printed
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert manifest["training_steps"] == 4 and manifest["final_lambda"] == 1.0
    assert manifest["lambda_warmup_frac"] == 0.5
    assert manifest["model_type"] == "bitsweep-byte_lm-ternary"
    assert manifest["source"]["packing"] == "base3"
    assert (out / "training_manifest.json").is_file()
    # the trained codes, read back by gguf's own reader and dequantizer
    packed = load_packed_checkpoint(checkpoint / PACKED_DIR)
    reader = gguf.GGUFReader(str(out / "model.gguf"))
    tensors = {t.name: t for t in reader.tensors}
    for name in packed.manifest["ternary_layers"]:
        codes = packed.state_dict[f"{name}.codes"].numpy().astype(np.float32)
        gamma = np.float32(np.float16(float(packed.state_dict[f"{name}.scale"])))
        t = tensors[f"{name}.weight"]
        decoded = gguf.quants.dequantize(t.data, t.tensor_type).reshape(codes.shape)
        np.testing.assert_array_equal(decoded, codes * gamma)


def test_export_accepts_the_packed_directory_and_tq1(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "tq1"
    args = ["export", str(checkpoint / PACKED_DIR), "--format", "gguf-tq1", "--out", str(out)]
    assert main(args) == 0
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert manifest["tensor_types"]["TQ1_0"]["bits_per_weight"] == 1.6875


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_bad_path_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    args = ["export", str(missing), "--format", "gguf-tq2", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "is neither an existing checkpoint directory nor an MLflow run id" in _error(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["export", str(empty), "--format", "gguf-tq2", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "is not a packed checkpoint" in _error(capsys)


def test_hf_bitnet_of_a_byte_lm_and_a_tampered_file_are_refused(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["export", str(checkpoint), "--format", "hf-bitnet", "--out", str(tmp_path / "hf")]
    assert main(args) == 2
    assert "use --format gguf-tq2 or gguf-tq1" in _error(capsys)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(checkpoint / PACKED_DIR, copy)
    with (copy / "model.safetensors").open("r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\x00" if handle.read(1) != b"\x00" else b"\x01")
    args = ["export", str(copy), "--format", "gguf-tq2", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "does not match the SHA-256" in _error(capsys)


def test_export_by_mlflow_run_id(
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("export", artifact_location=str(tmp_path / "art"))
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(checkpoint / PACKED_DIR), "model/packed")
    out = tmp_path / "out"
    args = ["export", run.info.run_id, "--format", "gguf-tq2", "--out", str(out),
            "--tracking-uri", uri]  # fmt: skip
    assert main(args) == 0
    assert (out / "model.gguf").is_file()
    capsys.readouterr()  # MLflow's own log lines (database creation, download progress)
    unknown = "0" * 32
    args[1] = unknown
    assert main(args) == 2
    assert f"MLflow run {unknown}" in _error(capsys)


def test_export_into_checkpoint_artifacts(checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    from trainables.export import export_into_checkpoint

    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint, copy)
    written = export_into_checkpoint(copy, ["gguf-tq2", "gguf-tq1"])
    assert written == [copy / "artifacts" / "export" / f for f in ("gguf-tq2", "gguf-tq1")]
    assert all((w / "model.gguf").is_file() and (w / "export_manifest.json").is_file()
               for w in written)  # fmt: skip


def test_export_formats_at_the_end_of_a_trial(tmp_path: Path) -> None:
    """``export.formats`` writes the exports into the final checkpoint's artifacts folder."""
    from trainables.config import ConfigError

    cfg = RunConfig.from_dict({
        "model": {"d_model": 32, "n_heads": 2, "seq_len": 32, "n_layers": 1},
        "train": {"steps": 2, "eval_every": 2, "batch_size": 4},
        "data": {"eval_batches": 1},
        "export": {"formats": ["gguf-tq2"]},
    })  # fmt: skip
    reporter = ListReporter(checkpoint_root=tmp_path)
    train(cfg, reporter=reporter)
    exported = sorted(tmp_path.rglob("artifacts/export/gguf-tq2/*"))
    assert any(p.suffix == ".gguf" for p in exported), exported
    assert any(p.name == "export_manifest.json" for p in exported)
    with pytest.raises(ConfigError, match="hf-bitnet exports a converted"):
        RunConfig.from_dict({"export": {"formats": ["hf-bitnet"]}})
