"""Broken saved state is named in one line before resume touches anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.preflight import StateFileError, check_restorable


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
