"""Broken saved state is named in one line before resume touches anything, or put back from
the sweep's last whole snapshot when a killed driver cut it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from test_state_snapshot import staging_set

from orchestrator.preflight import StateFileError, check_restorable
from orchestrator.state_snapshot import save_snapshot


def test_truncated_experiment_state_is_named(tmp_path: Path) -> None:
    (tmp_path / "experiment_state-a.json").write_text('{"trial_data": [["x", ')
    with pytest.raises(StateFileError, match=r"experiment_state-a\.json is truncated"):
        check_restorable(str(tmp_path))


@pytest.mark.parametrize(("content", "what"), [(b"", "empty"), (b"garbage" * 10, "not an sqlite")])
def test_broken_study_is_named(tmp_path: Path, content: bytes, what: str) -> None:
    (tmp_path / "experiment_state-a.json").write_text('{"trial_data": []}')
    (tmp_path / "optuna.db").write_bytes(content)
    with pytest.raises(StateFileError, match=what) as err:
        check_restorable(str(tmp_path))
    assert str(tmp_path / "optuna.db") in str(err.value)
    assert (tmp_path / "optuna.db").read_bytes() == content  # nothing touched


def test_sound_state_passes(tmp_path: Path) -> None:
    import optuna

    optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s")
    (tmp_path / "experiment_state-a.json").write_text('{"trial_data": []}')
    check_restorable(str(tmp_path))


def test_a_state_file_cut_by_a_killed_driver_is_put_back_from_the_snapshot(
    tmp_path: Path,
) -> None:
    storage, staging = tmp_path / "storage", tmp_path / "staging"
    storage.mkdir(), staging.mkdir()
    save_snapshot(str(storage), str(staging), staging_set(staging, 1))
    names = staging_set(staging, 2)
    save_snapshot(str(storage), str(staging), names)  # the newer snapshot replaces the first
    for name in names:  # Tune's copy to the storage: the driver died while it copied the state
        (storage / name).write_bytes((staging / name).read_bytes())
    (storage / "experiment_state-a.json").write_bytes(b"")
    check_restorable(str(storage))
    assert (
        json.loads((storage / "experiment_state-a.json").read_text())["trial_data"]
        == [["t", "{}"]] * 2
    )
    assert pickle.loads((storage / "searcher-state-a.pkl").read_bytes()) == {"trials": 2}


def test_without_a_snapshot_the_cut_state_is_named(tmp_path: Path) -> None:
    (tmp_path / "experiment_state-a.json").write_bytes(b"")
    with pytest.raises(StateFileError, match="truncated"):
        check_restorable(str(tmp_path))
