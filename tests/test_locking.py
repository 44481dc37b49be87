"""The sweep folder lock: a second driver is refused naming the holder; a dead holder's is taken."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.locking import SweepLockedError, acquire, holder, lock_path

HOLD = """
import sys, time
from orchestrator.locking import acquire
lock = acquire(sys.argv[1], "demo")
print("locked", flush=True)
time.sleep(120)
"""


def _holder_process(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_driver_is_refused_with_pid_and_host(tmp_path: Path) -> None:
    proc = _holder_process(tmp_path)
    try:
        with pytest.raises(SweepLockedError) as refused:
            acquire(str(tmp_path), "demo")
        message = str(refused.value)
        assert f"pid {proc.pid}" in message and socket.gethostname() in message
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_driver_is_taken_over(tmp_path: Path) -> None:
    proc = _holder_process(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)  # no cleanup runs: the record still names the dead pid
    proc.wait()
    assert holder(lock_path(str(tmp_path)))["pid"] == proc.pid
    with acquire(str(tmp_path), "demo") as lock:
        assert holder(lock.path)["pid"] == os.getpid()
    assert holder(lock_path(str(tmp_path))) == {}  # released: the record is cleared


def test_remote_storage_locks_on_this_machine(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BITSWEEP_HOME", str(tmp_path / "home"))
    path = lock_path("s3://bucket/sweeps/demo-1")
    assert path.is_relative_to(tmp_path / "home") and path != lock_path("s3://bucket/other")
    start = time.monotonic()
    with acquire("s3://bucket/sweeps/demo-1", "demo"):
        assert time.monotonic() - start < 1
