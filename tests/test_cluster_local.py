"""The local scripts for real (slow): a head and a worker start, authenticate and stop by pid;
the MLflow server script serves and stops; a node that never gets ready is not left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cluster_fixtures import LOCAL, free_ports, gone, script_env, session_pids

_DRIVER = """
import json, os, time
import ray
ray.init(address=os.environ["BITSWEEP_HEAD_ADDRESS"], log_to_driver=False,
         configure_logging=False)
deadline = time.monotonic() + 30
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= 2 or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps({"alive": len(alive), "resources": ray.cluster_resources()}))
"""


def _http_status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_local_head_and_worker_start_authenticate_and_stop_by_pid(tmp_path: Path) -> None:
    gcs, dash, head_agent, client, worker_agent = free_ports(5)
    # Ray's Unix sockets live under the temp dir and may not exceed 107 bytes: keep it short.
    ray_tmp = Path(tempfile.mkdtemp(prefix="bsr-", dir="/tmp"))
    token_path = tmp_path / "token"
    state = tmp_path / "state"
    common = {
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "BITSWEEP_NUM_CPUS": "1",
        "BITSWEEP_OBJECT_STORE_MEMORY": str(100 * 1024 * 1024),
        "BITSWEEP_START_TIMEOUT": "60",
    }
    head_env = script_env(
        tmp_path,
        **common,
        BITSWEEP_GCS_PORT=str(gcs),
        BITSWEEP_DASHBOARD_PORT=str(dash),
        BITSWEEP_DASHBOARD_AGENT_PORT=str(head_agent),
        BITSWEEP_CLIENT_SERVER_PORT=str(client),
        BITSWEEP_TRIAL_SLOTS="3",
        BITSWEEP_TEMP_DIR=str(ray_tmp / "h"),
    )
    # A second node on the same machine: its own agent port and temp dir, no second log monitor.
    worker_env = script_env(
        tmp_path,
        **common,
        BITSWEEP_DASHBOARD_AGENT_PORT=str(worker_agent),
        BITSWEEP_TEMP_DIR=str(ray_tmp / "w"),
        BITSWEEP_INCLUDE_LOG_MONITOR="false",
    )
    recorded: list[int] = []
    sessions: list[int] = []
    started = time.monotonic()
    try:
        subprocess.run(
            [str(LOCAL / "start-head.sh")], env=head_env, check=True, timeout=90, text=True
        )
        info = json.loads((state / "cluster.json").read_text())
        assert info["token_path"] == str(token_path) and info["auth_mode"] == "token"
        assert info["dashboard_url"] == f"http://127.0.0.1:{dash}"
        assert info["gcs_address"].endswith(f":{gcs}")
        assert oct(token_path.stat().st_mode & 0o777) == "0o600"
        assert "auth_token" not in (state / "cluster.env").read_text()
        token = token_path.read_text().strip()
        assert token not in (state / "cluster.env").read_text()

        subprocess.run(
            [str(LOCAL / "start-worker.sh"), info["gcs_address"]],
            env=worker_env,
            check=True,
            timeout=90,
        )
        for node in ("head", "worker-1"):
            recorded += [int(p) for p in (state / node / "pids").read_text().split()]
            sessions.append(int((state / node / "sid").read_text()))
        assert len(recorded) >= 8

        # The job API wants the token; the health check does not.
        assert _http_status(f"{info['dashboard_url']}/api/gcs_healthz") == 200
        assert _http_status(f"{info['dashboard_url']}/api/jobs/") == 401
        assert _http_status(f"{info['dashboard_url']}/api/jobs/", token) == 200

        driver_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        driver_env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(token_path),
            BITSWEEP_HEAD_ADDRESS=info["gcs_address"],
            RAY_USAGE_STATS_ENABLED="0",
        )
        out = subprocess.run(
            [sys.executable, "-c", _DRIVER],
            env=driver_env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        seen = json.loads(out.stdout.strip().splitlines()[-1])
        assert seen["alive"] == 2
        assert seen["resources"]["CPU"] == 2
        assert seen["resources"]["trial_slot"] == 3
    finally:
        stop = subprocess.run(
            [str(LOCAL / "stop.sh")],
            env=script_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        shutil.rmtree(ray_tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    assert stop.returncode == 0, stop.stderr
    assert not gone(recorded), "processes of the local cluster outlived stop.sh"
    for node in ("head", "worker-1"):
        assert not (state / node / "pid").exists()
        assert not (state / node / "sid").exists()
    assert not (state / "cluster.env").exists()
    assert not [p for sid in sessions for p in session_pids(sid)]
    assert elapsed < 60, f"the local cluster round trip took {elapsed:.0f}s"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_mlflow_server_script_serves_and_stops_by_pid(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    env = script_env(tmp_path, BITSWEEP_MLFLOW_PORT=str(port), BITSWEEP_START_TIMEOUT="60")
    recorded: list[int] = []
    try:
        out = subprocess.run(
            [str(LOCAL / "mlflow-server.sh"), "start"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert out.returncode == 0, out.stderr
        uri = out.stdout.strip()
        assert uri == f"http://127.0.0.1:{port}"
        recorded = [int(p) for p in (tmp_path / "state/mlflow/pids").read_text().split()]
        assert _http_status(f"{uri}/health") == 200
        # Its DNS-rebinding guard: the API refuses a foreign Host header (/health does not).
        api = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _http_status(api) == 200
        request = urllib.request.Request(api, headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        status = subprocess.run([str(LOCAL / "mlflow-server.sh"), "status"], env=env)
        assert status.returncode == 0
        assert (tmp_path / "state/mlflow/mlflow.db").exists()
    finally:
        stop = subprocess.run(
            [str(LOCAL / "stop.sh"), "mlflow"], env=env, capture_output=True, text=True
        )
    assert stop.returncode == 0, stop.stderr
    assert recorded and not gone(recorded)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_node_that_never_gets_ready_is_not_left_behind(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("0" * 8)
    token.chmod(0o600)
    dead_port, agent_port = free_ports(2)
    env = script_env(
        tmp_path,
        RAY_AUTH_TOKEN_PATH=str(token),
        BITSWEEP_START_TIMEOUT="3",
        BITSWEEP_DASHBOARD_AGENT_PORT=str(agent_port),
    )
    proc = subprocess.run(
        [str(LOCAL / "start-worker.sh"), f"127.0.0.1:{dead_port}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode != 0
    assert "start-up failed" in proc.stderr and "worker-1: stopped" in proc.stderr
    state = tmp_path / "state" / "worker-1"
    assert not (state / "pid").exists() and not (state / "sid").exists()
