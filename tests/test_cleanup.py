"""Stopping what a killed driver left running: by pid and start time, never by name."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import psutil

from orchestrator.cleanup import PIDS_FILE, stop_orphans


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def _record(folder: Path, procs: list[tuple[int, float]]) -> None:
    entries = [{"pid": pid, "create_time": t, "kind": "raylet"} for pid, t in procs]
    record = {"host": socket.gethostname(), "processes": entries}
    (folder / PIDS_FILE).write_text(json.dumps(record))


def test_recorded_processes_are_stopped(tmp_path: Path) -> None:
    orphan = _sleeper()
    try:
        _record(tmp_path, [(orphan.pid, psutil.Process(orphan.pid).create_time())])
        assert stop_orphans(str(tmp_path), timeout=5) == [orphan.pid]
        assert orphan.wait(timeout=10) is not None
        assert not (tmp_path / PIDS_FILE).exists()
    finally:
        orphan.kill()


def test_a_reused_pid_is_left_alone(tmp_path: Path) -> None:
    bystander = _sleeper()
    try:
        started = psutil.Process(bystander.pid).create_time()
        _record(tmp_path, [(bystander.pid, started - 100.0)])  # the pid now names another process
        assert stop_orphans(str(tmp_path), timeout=5) == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
