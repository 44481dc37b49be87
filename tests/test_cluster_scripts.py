"""The local scripts under cluster/local/: they parse, are strict, print usage, refuse wildcard
binds and disabled auth, and stop.sh stops recorded sessions by pid only (SIGKILL after SIGTERM,
never a recycled pid).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from cluster_fixtures import EXECUTABLES, LOCAL, SCRIPTS, alive, script_env


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses_and_is_strict(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "set -euo pipefail" in text
    # Stop by pid only: nothing by process name, no Ray-wide stop.
    assert not re.search(r"\b(pkill|killall)\b", text)
    assert not re.search(r"\bray\"?\s+stop\b|\$BITSWEEP_RAY\"?\s+stop\b", text)


@pytest.mark.parametrize("script", EXECUTABLES, ids=lambda p: p.name)
def test_shell_script_prints_usage(script: Path) -> None:
    assert os.access(script, os.X_OK)
    out = subprocess.run([str(script), "-h"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("usage:")


@pytest.mark.parametrize(
    ("script", "env", "args"),
    [
        ("start-head.sh", {"BITSWEEP_DASHBOARD_HOST": "0.0.0.0"}, []),
        ("start-head.sh", {"BITSWEEP_DASHBOARD_HOST": "::"}, []),
        ("start-head.sh", {}, ["--", "--dashboard-host=0.0.0.0"]),
        ("start-head.sh", {}, ["--", "--dashboard-host", "0.0.0.0"]),
        ("start-worker.sh", {}, ["127.0.0.1:1", "--", "--dashboard-host=0.0.0.0"]),
        ("mlflow-server.sh", {"BITSWEEP_MLFLOW_HOST": "0.0.0.0"}, ["start"]),
        ("start-head.sh", {"RAY_AUTH_MODE": "disabled"}, []),
    ],
)
def test_scripts_refuse_wildcard_binds_and_disabled_auth(
    tmp_path: Path, script: str, env: dict[str, str], args: list[str]
) -> None:
    proc = subprocess.run(
        [str(LOCAL / script), *args],
        env=script_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "refusing" in proc.stderr or "token authentication" in proc.stderr
    assert not (tmp_path / "state" / "head" / "pid").exists()


def test_worker_without_a_token_says_how_to_provide_one(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(LOCAL / "start-worker.sh"), "127.0.0.1:1"],
        env=script_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "RAY_AUTH_TOKEN_PATH" in proc.stderr and "RAY_AUTH_TOKEN" in proc.stderr


def test_stop_with_nothing_recorded(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(LOCAL / "stop.sh"), "--all"], env=script_env(tmp_path), capture_output=True
    )
    assert proc.returncode == 0


def test_stop_escalates_to_sigkill_for_a_session_that_ignores_sigterm(tmp_path: Path) -> None:
    """The generic service stop: leader and children of the recorded session, all by pid."""
    stubborn = "trap '' TERM; sleep 300 & sleep 300 & wait"
    spawn = (
        f"source {LOCAL / 'common.sh'}; "
        f'bs_spawn "$BITSWEEP_CLUSTER_DIR/stubborn" "$BITSWEEP_CLUSTER_DIR/stubborn.log" '
        f"bash -c {json.dumps(stubborn)}; sleep 0.5; "
        f'bs_record_pids "$BITSWEEP_CLUSTER_DIR/stubborn"'
    )
    env = script_env(tmp_path, BITSWEEP_STOP_TIMEOUT="1")
    subprocess.run(["bash", "-c", spawn], env=env, check=True, timeout=30)
    state = tmp_path / "state" / "stubborn"
    sid = int((state / "sid").read_text())
    pids = [int(p) for p in (state / "pids").read_text().split()]
    assert len(pids) == 3 and sid in pids
    proc = subprocess.run(
        [str(LOCAL / "stop.sh"), "stubborn"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "SIGKILL" in proc.stderr
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)]
    assert not (state / "pid").exists()


def test_stop_leaves_a_recycled_pid_alone(tmp_path: Path) -> None:
    """A recorded pid whose start time differs belongs to someone else: never signalled."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state = tmp_path / "state" / "head"
        state.mkdir(parents=True)
        (state / "pid").write_text(f"{other.pid}\n")
        (state / "sid").write_text(f"{other.pid}\n")
        (state / "started").write_text("boot+1\n")
        proc = subprocess.run(
            [str(LOCAL / "stop.sh")], env=script_env(tmp_path), capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert other.poll() is None
        assert not (state / "pid").exists()
    finally:
        other.kill()
        other.wait()
