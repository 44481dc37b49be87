"""How a driver ends: SIGTERM like Ctrl+C, one-line errors, no MLflow run left RUNNING."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from orchestrator import exits
from orchestrator.tracking import SweepTracker


def test_sigterm_outside_fit_raises_keyboard_interrupt() -> None:
    restore = exits.install_sigterm()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line
        assert exits.received_sigterm()
    finally:
        restore()
        exits.STATE.terminated = False


def test_sigterm_inside_fit_goes_to_tunes_stop_handler() -> None:
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda sig, frame: calls.append(sig))
    restore = exits.install_sigterm()
    try:
        with exits.tune_fit():
            os.kill(os.getpid(), signal.SIGTERM)  # Tune then saves and stops: no exception
        assert calls == [signal.SIGUSR1]
    finally:
        restore()
        signal.signal(signal.SIGUSR1, previous)
        exits.STATE.terminated = False


def test_one_line_and_full_disk() -> None:
    long = RuntimeError("Trial failed\n" + "\n".join(f"  frame {i}" for i in range(30)))
    assert exits.one_line(long) == "Trial failed (details with --verbose)"
    full = OSError(errno.ENOSPC, "No space left on device", "/data/sweeps/demo-1/optuna.db")
    try:
        raise RuntimeError("invalid data in the commit") from full
    except RuntimeError as err:
        line = exits.one_line(err)
    assert line.startswith("no space left on device writing /data/sweeps/demo-1/optuna.db")


def test_a_full_sqlite_store_is_named_by_the_sweep_folder_not_a_url() -> None:
    """sqlite says "database or disk is full" and sqlalchemy appends https://sqlalche.me/...:
    the line names the sweep's folder (or the storage), never the URL's tail."""
    cause = RuntimeError(
        "(sqlite3.OperationalError) database or disk is full\n"
        "(Background on this error at: https://sqlalche.me/e/21/e3q8)"
    )
    assert "sqlalche" not in exits.one_line(cause)
    with pytest.raises(exits.StorageFullError) as caught:
        try:
            raise cause
        except RuntimeError as err:
            exits.raise_if_full(err, "/data/sweeps/demo-1")
    line = exits.one_line(caught.value)
    assert line.startswith("no space left on device under /data/sweeps/demo-1: free space")


def test_open_runs_are_closed_with_their_real_status(tmp_path: Path) -> None:
    tracker = SweepTracker("demo", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.start()
    tracker.trial_started("t1", {"train.steps": 2})
    tracker.trial_started("t2", {"train.steps": 2})
    tracker.trial_finished("t2")
    exits.close_on_error(tracker, ValueError("optuna.db is empty\nmore"))
    runs = {r.data.tags.get("bitsweep.trial_id", "parent"): r for r in tracker._children()}
    parent = tracker.client.get_run(tracker.parent_run_id)
    assert runs["t1"].info.status == "FAILED" and runs["t2"].info.status == "FINISHED"
    assert runs["t1"].data.tags["bitsweep.error"] == "ValueError: optuna.db is empty"
    assert parent.info.status == "FAILED"
