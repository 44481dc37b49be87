"""Sweeps on a real two-node Ray cluster started with cluster/local: submit, logs, stop, auth."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cluster_files import LOCAL, _free_ports, _gone, _script_env

from orchestrator.jobs import (
    NO_PYTHON,
    Connection,
    JobError,
    cluster_ready_spec,
    dashboard_address,
    entrypoint,
)
from orchestrator.spec import load_sweep

TINY = ["model.d_model=32", "model.n_heads=2", "model.seq_len=32", "train.batch_size=8",
        "data.eval_batches=1", "train.eval_every=4", "search.num_samples=2"]  # fmt: skip


def test_local_tracking_is_refused_for_a_remote_cluster() -> None:
    spec = load_sweep("demo", ["tracking.uri=sqlite:///mlflow.db"])
    with pytest.raises(JobError, match=r"tracking\.uri 'sqlite:///mlflow\.db' is local"):
        cluster_ready_spec(spec, Connection("http://10.1.2.3:8265", None))
    remote = load_sweep("demo", ["tracking.uri=http://mlflow:5000"])
    with pytest.raises(JobError, match=r"storage\.path 'bitsweep_results' is relative"):
        cluster_ready_spec(remote, Connection("http://10.1.2.3:8265", None))
    shared = load_sweep("demo", ["tracking.uri=http://mlflow:5000", "storage.path=s3://b/sweeps"])
    assert cluster_ready_spec(shared, Connection("http://10.1.2.3:8265", None)) == shared


def test_a_cluster_on_this_machine_gets_absolute_locations(tmp_path: Path) -> None:
    os.chdir(tmp_path)
    spec = load_sweep("demo", ["tracking.uri=sqlite:///mlflow.db"])
    ready = cluster_ready_spec(spec, Connection("http://127.0.0.1:8265", None))
    assert ready.tracking.uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert ready.storage.path == str(tmp_path / "bitsweep_results")


def test_address_comes_from_the_flag_or_the_cluster_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("BITSWEEP_DASHBOARD_URL", raising=False)
    with pytest.raises(JobError, match="--address"):
        dashboard_address(None)
    monkeypatch.setenv("BITSWEEP_DASHBOARD_URL", "http://127.0.0.1:8265/")
    assert dashboard_address(None) == "http://127.0.0.1:8265"
    assert dashboard_address("head:8265") == "http://head:8265"


def test_the_entrypoint_tries_the_interpreter_of_rays_environment_before_the_resolved_one() -> None:
    given = entrypoint(["run", "my sweep.yaml"], "/opt/my py/bin/python")
    assert given == "'/opt/my py/bin/python' -m orchestrator.cli run 'my sweep.yaml'"
    found = entrypoint(["run", "sweep.yaml"])
    parts = ("${BITSWEEP_PYTHON:-}", "$v/bin/python3", "readlink -f /proc/$PPID/exe", " python3;")
    order = [found.index(part) for part in parts]
    assert order == sorted(order)
    assert '"$p" -m orchestrator.cli run sweep.yaml' in found and found.endswith("exit 127")


# The job supervisor as Ray runs it from a virtualenv nobody activated: started through the
# virtualenv's bin/python (a link to the base interpreter, which is what /proc/PID/exe shows),
# with Ray's _raylet.so of the virtualenv mapped, running the entrypoint under /bin/sh.
_SUPERVISOR = """
import importlib.util, mmap, subprocess, sys
from pathlib import Path
if sys.argv[1] == "map":  # what importing ray does to the supervisor's memory map
    raylet = Path(importlib.util.find_spec("ray").origin).parent / "_raylet.so"
    with open(raylet, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
sys.exit(subprocess.run(["/bin/sh", "-c", sys.argv[2]]).returncode)
"""


def test_the_entrypoint_finds_an_unactivated_virtualenvs_python(tmp_path: Path) -> None:
    import importlib.util

    base = os.path.realpath(sys.executable)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH, no BITSWEEP_PYTHON
    others = [base, *(["python3"] if shutil.which("python3", path=env["PATH"]) else [])]
    if base == os.path.abspath(sys.executable) or importlib.util.find_spec("ray") is None:
        pytest.skip("not running from a virtualenv whose python links to a base interpreter")
    for python in others:
        probe = subprocess.run([python, "-c", "import orchestrator"], cwd=tmp_path, env=env,
                               capture_output=True)  # fmt: skip
        if probe.returncode == 0:
            pytest.skip(f"{python} imports bitsweep outside the virtualenv")
    command = entrypoint(["--version"])

    def supervise(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _SUPERVISOR, mode, command], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip

    found = supervise("map")
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith("bitsweep "), found.stdout + found.stderr
    # without Ray's library mapped only the resolved base interpreter is left: it cannot
    # import bitsweep, which is what a plain `ray start` from a virtualenv met before
    lost = supervise("plain")
    assert lost.returncode == 127 and NO_PYTHON in lost.stderr, lost.stdout + lost.stderr


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A head and one worker node on this machine, started and stopped (by pid) by the scripts."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    gcs, dash, head_agent, client, worker_agent = _free_ports(5)
    ray_tmp = Path(tempfile.mkdtemp(prefix="bsj-", dir="/tmp"))  # Unix socket paths stay short
    token_path = tmp_path / "token"
    common = {"RAY_AUTH_TOKEN_PATH": str(token_path), "BITSWEEP_NUM_CPUS": "1",
              "BITSWEEP_OBJECT_STORE_MEMORY": str(100 * 1024 * 1024),
              "BITSWEEP_START_TIMEOUT": "60"}  # fmt: skip
    head_env = _script_env(
        tmp_path, **common, BITSWEEP_GCS_PORT=str(gcs), BITSWEEP_DASHBOARD_PORT=str(dash),
        BITSWEEP_DASHBOARD_AGENT_PORT=str(head_agent), BITSWEEP_CLIENT_SERVER_PORT=str(client),
        BITSWEEP_TRIAL_SLOTS="4", BITSWEEP_TEMP_DIR=str(ray_tmp / "h"),
    )  # fmt: skip
    worker_env = _script_env(
        tmp_path, **common, BITSWEEP_DASHBOARD_AGENT_PORT=str(worker_agent),
        BITSWEEP_TEMP_DIR=str(ray_tmp / "w"), BITSWEEP_INCLUDE_LOG_MONITOR="false",
    )  # fmt: skip
    state = tmp_path / "state"
    recorded: list[int] = []
    try:
        subprocess.run([str(LOCAL / "start-head.sh")], env=head_env, check=True, timeout=90)
        info = json.loads((state / "cluster.json").read_text())
        subprocess.run(
            [str(LOCAL / "start-worker.sh"), info["gcs_address"]],
            env=worker_env, check=True, timeout=90,
        )  # fmt: skip
        for node in ("head", "worker-1"):
            recorded += [int(p) for p in (state / node / "pids").read_text().split()]
        yield {"dashboard": info["dashboard_url"], "token_path": token_path, "home": tmp_path}
    finally:
        stop = subprocess.run(
            [str(LOCAL / "stop.sh")], env=_script_env(tmp_path), capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        shutil.rmtree(ray_tmp, ignore_errors=True)
        assert stop.returncode == 0, stop.stderr
        assert not _gone(recorded), "processes of the local cluster outlived stop.sh"


def _cli(*args: str, cwd: Path, token_path: Path | None, timeout: float = 300):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "BITSWEEP_"))}
    env["HOME"] = str(cwd)  # no ~/.ray/auth_token of the machine's own
    if token_path is not None:
        env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_submit_wait_logs_stop_on_a_real_cluster(
    local_cluster: dict[str, Any], mlflow_server: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    address = local_cluster["dashboard"]
    token = local_cluster["token_path"]
    common = [*TINY, f"tracking.uri={mlflow_server}", "tracking.experiment=jobs",
              f"storage.path={tmp_path / 'results'}"]  # fmt: skip

    denied = _cli("submit", "demo", *common, "--address", address, cwd=tmp_path, token_path=None)
    assert denied.returncode == 2
    assert "authentication failed" in denied.stderr and "RAY_AUTH_TOKEN" in denied.stderr
    assert "Traceback" not in denied.stderr

    done = _cli("submit", "demo", *common, "train.steps=8", "--address", address, "--wait",
                "--job-id", "sweep-ok", cwd=tmp_path, token_path=token)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "job sweep-ok: SUCCEEDED" in done.stdout
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("jobs")
    children = client.search_runs([experiment.experiment_id], "tags.`bitsweep.role` = 'trial'")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)

    logs = _cli("logs", "sweep-ok", "--address", address, cwd=tmp_path, token_path=token)
    # each run is a new sweep with its own id (demo-<6 hex>); the summary counts every status
    assert logs.returncode == 0, logs.stderr
    assert re.search(r"sweep demo-[0-9a-f]{6}: 2 trials: .*\b0 failed", logs.stdout), logs.stdout
    listed = _cli("jobs", "--address", address, cwd=tmp_path, token_path=token)
    assert "sweep-ok  SUCCEEDED  sweep demo" in listed.stdout

    long = _cli("submit", "demo", *common, "train.steps=100000", "--address", address,
                "--job-id", "sweep-long", cwd=tmp_path, token_path=token)  # fmt: skip
    assert long.returncode == 0, long.stderr
    deadline = time.monotonic() + 120
    while "RUNNING" not in _cli("status", "sweep-long", "--address", address, cwd=tmp_path,
                                token_path=token).stdout:  # fmt: skip
        assert time.monotonic() < deadline, "the second job never started"
        time.sleep(1)
    stopped = _cli("stop", "sweep-long", "--address", address, cwd=tmp_path, token_path=token)
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout
    deadline = time.monotonic() + 120
    while True:
        status = _cli("status", "sweep-long", "--address", address, cwd=tmp_path, token_path=token)
        if "STOPPED" in status.stdout:
            break
        assert time.monotonic() < deadline, status.stdout
        time.sleep(1)
