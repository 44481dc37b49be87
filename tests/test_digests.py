"""Signed digests of the files ``resume`` unpickles: a replaced file is refused, unread."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from orchestrator.digests import DIGESTS_FILE, TamperedStateError, guarded, record, verify


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITSWEEP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BITSWEEP_TRUST_STORAGE", raising=False)


def _sweep(tmp_path: Path) -> Path:
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"ok": 1}))
    (folder / "experiment_state-a.json").write_text('{"trial_data": []}')
    (folder / "bitsweep_sweep.yaml").write_text("name: demo\n")  # read with safe_load: free
    record(str(folder), ["tuner.pkl", "experiment_state-a.json"])
    return folder


def test_untouched_files_pass(tmp_path: Path) -> None:
    verify(str(_sweep(tmp_path)))


def test_replaced_file_is_refused_naming_it(tmp_path: Path) -> None:
    folder = _sweep(tmp_path)
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"evil": 1}))
    with pytest.raises(TamperedStateError, match=r"tuner\.pkl"):
        verify(str(folder))


def test_added_pickle_is_refused(tmp_path: Path) -> None:
    folder = _sweep(tmp_path)
    (folder / "searcher-state-x.pkl").write_bytes(b"garbage")
    with pytest.raises(TamperedStateError, match=r"searcher-state-x\.pkl"):
        verify(str(folder))


def test_record_rewritten_without_the_key_is_refused(tmp_path: Path) -> None:
    folder = _sweep(tmp_path)
    (folder / "tuner.pkl").write_bytes(b"evil")
    import hashlib
    import json

    document = json.loads((folder / DIGESTS_FILE).read_text())
    document["files"]["tuner.pkl"] = [hashlib.sha256(b"evil").hexdigest()]
    (folder / DIGESTS_FILE).write_text(json.dumps(document))  # the MAC no longer matches
    with pytest.raises(TamperedStateError, match="signature"):
        verify(str(folder))


def test_trust_switch_and_guarded_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _sweep(tmp_path)
    (folder / "tuner.pkl").write_bytes(b"evil")
    monkeypatch.setenv("BITSWEEP_TRUST_STORAGE", "1")
    verify(str(folder))
    assert guarded("search_gen_state-x.json") and guarded("basic-variant-state-x.json")
    assert not guarded("bitsweep_sweep.yaml") and not guarded("tmp-searcher-state-x.pkl")


def test_drivers_starting_at_once_on_a_fresh_machine_share_one_whole_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = "from orchestrator.digests import _key; print(_key().hex())"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    keys = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert len(keys) == 1 and len(keys.pop()) == 64
    home = tmp_path / "home"
    assert [p.name for p in home.iterdir()] == ["digest.key"]  # no private copy left behind
