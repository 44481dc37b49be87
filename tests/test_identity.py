"""Sweep identity: a new id per run, and finding a saved sweep by id or by its newest name."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from orchestrator.identity import new_sweep_id, resolve_saved, saved_sweeps, with_new_id
from orchestrator.spec import SweepSpecError, load_sweep
from orchestrator.sweep_folder import experiment_dir, load_saved_spec, save_spec


def test_every_run_gets_a_new_id_under_its_name() -> None:
    ids = {new_sweep_id("demo") for _ in range(200)}
    assert len(ids) == 200 and all(i.startswith("demo-") and len(i) == 11 for i in ids)
    spec = with_new_id(load_sweep("demo"), "mine")
    assert spec.name == "mine" and spec.sweep_id.startswith("mine-")
    with pytest.raises(SweepSpecError, match="--name"):
        with_new_id(load_sweep("demo"), "no spaces")


def test_saved_sweeps_resolve_by_id_or_newest_name(tmp_path: Path) -> None:
    storage = [f"storage.path={tmp_path}"]
    older = with_new_id(load_sweep("demo", [*storage, "train.steps=20"]))
    newer = with_new_id(load_sweep("demo", [*storage, "train.steps=30"]))
    save_spec(older)
    past = time.time() - 60
    os.utime(Path(experiment_dir(older)) / "bitsweep_sweep.yaml", (past, past))
    save_spec(newer)
    assert [s.sweep_id for s in saved_sweeps(str(tmp_path))] == [newer.sweep_id, older.sweep_id]
    assert resolve_saved("demo", str(tmp_path)) == experiment_dir(newer)
    assert resolve_saved(older.sweep_id, str(tmp_path)) == experiment_dir(older)
    back = load_saved_spec(older.sweep_id, str(tmp_path))
    assert back.sweep_id == older.sweep_id and back.run.train.steps == 20
    with pytest.raises(FileNotFoundError, match=newer.sweep_id):
        resolve_saved("ghost", str(tmp_path))
