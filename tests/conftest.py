"""Shared test settings: deterministic torch, a hypothesis profile sized for 2 CPU cores."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "bitsweep",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("bitsweep")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


# Quiet, fast Ray for tests (DESIGN.md: measured switches for Ray 2.60 on this machine).
RAY_TEST_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}
# Custom resource that one-worker trial drivers ask for instead of a CPU (see DESIGN.md).
TRIAL_SLOTS = 4


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance shared by every test that needs it; shut down by its own API."""
    os.environ.update(RAY_TEST_ENV)
    import ray

    context = ray.init(
        num_cpus=2,
        resources={"trial_slot": TRIAL_SLOTS},
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield context
    finally:
        ray.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop_process_group(proc, timeout: float = 15.0) -> None:
    """SIGTERM the server's own process group (it has one: start_new_session), then SIGKILL."""
    import signal
    import subprocess

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 for the session; yields its http URI.

    sqlite backend and proxied artifacts (``mlflow-artifacts:``, as a remote server serves them)
    under a temporary folder; no job runners (DESIGN.md: 0.5 GiB instead of 2). Stopped at the
    end through its process group, never by name.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({proc.returncode}); see {log_path}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    message = f"mlflow server not healthy in 60 s; see {log_path}"
                    raise RuntimeError(message) from None
                time.sleep(0.25)
        yield uri
    finally:
        _stop_process_group(proc)
