"""The deployment files under cluster/ as a whole: the expected tree, no value binding every
interface, no committed secret, and a README that covers every path.

The subjects have their own files: test_cluster_scripts.py (local shell scripts),
test_cluster_launcher.py (Ray cluster launcher YAML), test_kuberay.py (KubeRay manifests),
test_cluster_local.py (the local scripts starting a real head, worker and MLflow server; slow).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cluster_fixtures import (
    CLUSTER,
    KUBERAY_FILES,
    LAUNCHER_FILES,
    SCRIPTS,
    WILDCARD,
    load_all,
    yaml_strings,
)

# tests/test_jobs.py imports these names from here (cluster_fixtures is their home now)
from cluster_fixtures import LOCAL as LOCAL
from cluster_fixtures import free_ports as _free_ports  # noqa: F401
from cluster_fixtures import gone as _gone  # noqa: F401
from cluster_fixtures import script_env as _script_env  # noqa: F401


def test_cluster_tree_has_the_expected_files() -> None:
    names = {p.relative_to(CLUSTER).as_posix() for p in CLUSTER.rglob("*") if p.is_file()}
    for expected in (
        "README.md",
        "local/start-head.sh",
        "local/start-worker.sh",
        "local/stop.sh",
        "local/mlflow-server.sh",
        "launcher/aws.yaml",
        "launcher/gcp.yaml",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "kuberay/networkpolicy.yaml",
        "kuberay/storage.yaml",
    ):
        assert expected in names


_YAML_FILES = LAUNCHER_FILES + KUBERAY_FILES
_SECRET_PATTERNS = [
    re.compile(r"\b[0-9a-f]{64}\b"),  # a Ray token (secrets.token_hex(32))
    re.compile(r"AKIA[0-9A-Z]{16}"),  # an AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)(secret_access_key|password|passwd)\s*[:=]\s*\S"),
    re.compile(r"(?m)^\s*(stringData|data):\s*\n\s+auth_token:"),  # a token Secret
]


@pytest.mark.parametrize("path", _YAML_FILES, ids=lambda p: p.name)
def test_no_value_binds_every_interface(path: Path) -> None:
    for doc in load_all(path):
        for value in yaml_strings(doc):
            assert not WILDCARD.search(value), f"{path.name}: {value!r}"


@pytest.mark.parametrize("path", _YAML_FILES + SCRIPTS, ids=lambda p: p.name)
def test_no_secret_is_committed(path: Path) -> None:
    text = path.read_text()
    for pattern in _SECRET_PATTERNS:
        assert not pattern.search(text), f"{path.name}: {pattern.pattern}"


def test_readme_covers_the_paths_and_the_checklist() -> None:
    text = (CLUSTER / "README.md").read_text()
    for needle in (
        "start-head.sh",
        "start-worker.sh",
        "stop.sh",
        "mlflow-server.sh",
        "ray up",
        "raycluster.yaml",
        "rayjob.yaml",
        "storage.path",
        "s3://",
        "gs://",
        "RAY_AUTH_TOKEN_PATH",
        "Security checklist",
    ):
        assert needle in text, needle
