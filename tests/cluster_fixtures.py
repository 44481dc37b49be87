"""Shared paths and helpers of the tests of the deployment files under cluster/.

Used by test_cluster_files.py (every file), test_cluster_scripts.py (the local shell scripts),
test_cluster_launcher.py (Ray cluster launcher YAML), test_kuberay.py (KubeRay manifests) and
test_cluster_local.py (the local scripts starting real processes).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LOCAL = CLUSTER / "local"
LAUNCHER = CLUSTER / "launcher"
KUBERAY = CLUSTER / "kuberay"
SCRIPTS = sorted(LOCAL.glob("*.sh"))
EXECUTABLES = [p for p in SCRIPTS if p.name != "common.sh"]
LAUNCHER_FILES = sorted(LAUNCHER.glob("*.yaml"))
KUBERAY_FILES = sorted(KUBERAY.glob("*.yaml"))
BIN = Path(sys.executable).parent
WILDCARD = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])|--dashboard-host[= ]+(::|\[::\])(?!\S)")


def load_all(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document in ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def yaml_strings(node: Any) -> Iterator[str]:
    """Every string value (and mapping key) in a parsed YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from yaml_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from yaml_strings(item)


def by_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    """(file, document) of every KubeRay manifest document of ``kind``."""
    return [(p, d) for p in KUBERAY_FILES for d in load_all(p) if d.get("kind") == kind]


def script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment for the local scripts: state and HOME under ``tmp_path``, no inherited
    RAY_/BITSWEEP_ settings, this venv's ray and mlflow, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "BITSWEEP_"))}
    env.update(
        HOME=str(tmp_path / "home"),
        BITSWEEP_CLUSTER_DIR=str(tmp_path / "state"),
        BITSWEEP_RAY=str(BIN / "ray"),
        BITSWEEP_MLFLOW=str(BIN / "mlflow"),
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.update(extra)
    return env


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def session_pids(sid: int) -> list[int]:
    """The live processes of session ``sid``."""
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=True)
    pids = []
    for line in out.stdout.splitlines():
        pid, psid = line.split()
        if int(psid) == sid and alive(int(pid)):
            pids.append(int(pid))
    return pids


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait up to ``timeout`` s for ``pids`` to exit; the ones still alive (empty: all gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    return [p for p in pids if alive(p)]
