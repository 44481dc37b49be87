"""Packed ternary checkpoints: round trip into a converted model, manifest, tamper detection."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from trainables.quant import (
    CheckpointError,
    convert,
    load_packed_checkpoint,
    load_packed_into,
    prepare,
    save_packed_checkpoint,
)


def _model(scheme: str = "ternary") -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.Linear(64, 5))
    options = {"hadamard_layers": "all"} if scheme == "hadamard" else {}  # no o_proj here
    return prepare(net, scheme, **options).eval()


@pytest.mark.parametrize("packing", ["2bit", "base3"])
@pytest.mark.parametrize("scheme", ["ternary", "hadamard"])
def test_round_trip_reproduces_outputs(tmp_path: Path, packing: str, scheme: str) -> None:
    model = _model(scheme)
    x = torch.randn(4, 64)
    expected = model(x)
    path = save_packed_checkpoint(
        model,
        tmp_path / "ckpt",
        packing=packing,
        manifest={"training_steps": 10, "lambda_warmup_frac": 0.4},
    )
    manifest = json.loads((path / "manifest.json").read_text())
    for key in (
        "base_model",
        "training_steps",
        "lambda_warmup_frac",
        "final_lambda",
        "compression_ready",
        "model_type",
    ):
        assert key in manifest
    assert manifest["training_steps"] == 10 and manifest["packing"] == packing
    per_byte = {"2bit": 4, "base3": 5}[packing]
    assert manifest["packed_bytes"] == 2 * (64 * 64 // per_byte + (64 * 64 % per_byte > 0))
    assert manifest["bits_per_weight"] == pytest.approx(
        8 * (manifest["packed_bytes"] + 8) / (2 * 64 * 64)
    )
    target = convert(copy.deepcopy(_model(scheme)))
    for p in target.parameters():
        p.data.zero_()
    load_packed_into(target, path)
    torch.testing.assert_close(target(x), expected, atol=1e-5, rtol=0)


def test_checkpoint_from_converted_model_equals_from_prepared(tmp_path: Path) -> None:
    model = _model()
    a = load_packed_checkpoint(save_packed_checkpoint(model, tmp_path / "a")).state_dict
    b = load_packed_checkpoint(
        save_packed_checkpoint(convert(copy.deepcopy(model)), tmp_path / "b")
    ).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tampered_and_truncated_files_are_refused(tmp_path: Path) -> None:
    path = save_packed_checkpoint(_model(), tmp_path / "ckpt")
    tensors = path / "model.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-10] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_packed_checkpoint(path)
    tensors.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="truncated"):
        load_packed_checkpoint(path)


def test_missing_and_foreign_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_packed_checkpoint(tmp_path / "nowhere")
    path = save_packed_checkpoint(_model(), tmp_path / "ckpt")
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_packed_checkpoint(path)
    (path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="manifest"):
        load_packed_checkpoint(path)


def test_overwrite_is_atomic(tmp_path: Path) -> None:
    path = save_packed_checkpoint(_model(), tmp_path / "ckpt", manifest={"training_steps": 1})
    save_packed_checkpoint(_model(), path, manifest={"training_steps": 2})
    assert json.loads((path / "manifest.json").read_text())["training_steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging left behind
