"""The last whole copy of Tune's saved state: taken only when whole, put back only when cut."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from orchestrator.state_snapshot import cut_files, restore_snapshot, save_snapshot


def staging_set(folder: Path, trials: int) -> list[str]:
    """Write a whole staging set (experiment state, searcher pickle) of ``trials``; its names."""
    state = {"trial_data": [["t", "{}"]] * trials}
    (folder / "experiment_state-a.json").write_text(json.dumps(state))
    (folder / "searcher-state-a.pkl").write_bytes(pickle.dumps({"trials": trials}))
    return ["experiment_state-a.json", "searcher-state-a.pkl"]


def test_a_cut_pickle_counts_as_cut_and_an_incomplete_staging_set_is_not_snapshot(
    tmp_path: Path,
) -> None:
    names = staging_set(tmp_path, 1)
    data = (tmp_path / "searcher-state-a.pkl").read_bytes()
    (tmp_path / "searcher-state-a.pkl").write_bytes(data[:-3])
    assert [p.name for p in cut_files(tmp_path)] == ["searcher-state-a.pkl"]
    storage = tmp_path / "storage"
    storage.mkdir()
    save_snapshot(str(storage), str(tmp_path), names)
    assert not (storage / ".bitsweep_snapshot").exists()
    assert restore_snapshot(tmp_path) == []  # no snapshot: the check then names the file


def test_a_pickle_named_json_is_judged_as_a_pickle(tmp_path: Path) -> None:
    whole, cut = tmp_path / "search_gen_state-a.json", tmp_path / "search_gen_state-b.json"
    whole.write_bytes(pickle.dumps({"counter": 3}))  # what Tune writes under that name
    cut.write_bytes(whole.read_bytes()[:-1])
    assert cut_files(tmp_path) == [cut]
