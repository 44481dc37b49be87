"""The deployment files under cluster/: they parse, their keys are the ones Ray and KubeRay
expect, token auth is on everywhere, no dashboard listens on every interface, and the local
scripts start a real head and worker and stop every process they started, by pid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
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


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _strings(node: Any) -> Iterator[str]:
    """Every string value (and mapping key) in a parsed YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _by_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in KUBERAY_FILES for d in _load_all(p) if d.get("kind") == kind]


# --- shell scripts ------------------------------------------------------------------------------


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


def _script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
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
        env=_script_env(tmp_path, **env),
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
        env=_script_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "RAY_AUTH_TOKEN_PATH" in proc.stderr and "RAY_AUTH_TOKEN" in proc.stderr


def test_stop_with_nothing_recorded(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(LOCAL / "stop.sh"), "--all"], env=_script_env(tmp_path), capture_output=True
    )
    assert proc.returncode == 0


def _alive(pid: int) -> bool:
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


def _session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=True)
    pids = []
    for line in out.stdout.splitlines():
        pid, psid = line.split()
        if int(psid) == sid and _alive(int(pid)):
            pids.append(int(pid))
    return pids


def test_stop_escalates_to_sigkill_for_a_session_that_ignores_sigterm(tmp_path: Path) -> None:
    """The generic service stop: leader and children of the recorded session, all by pid."""
    stubborn = "trap '' TERM; sleep 300 & sleep 300 & wait"
    spawn = (
        f"source {LOCAL / 'common.sh'}; "
        f'bs_spawn "$BITSWEEP_CLUSTER_DIR/stubborn" "$BITSWEEP_CLUSTER_DIR/stubborn.log" '
        f"bash -c {json.dumps(stubborn)}; sleep 0.5; "
        f'bs_record_pids "$BITSWEEP_CLUSTER_DIR/stubborn"'
    )
    env = _script_env(tmp_path, BITSWEEP_STOP_TIMEOUT="1")
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
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]
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
            [str(LOCAL / "stop.sh")], env=_script_env(tmp_path), capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert other.poll() is None
        assert not (state / "pid").exists()
    finally:
        other.kill()
        other.wait()


# --- Ray cluster launcher YAML ------------------------------------------------------------------


def _ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_yaml_matches_rays_schema(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    (config,) = _load_all(path)
    # Ray's own bundled schema (what `ray up` validates against), then Ray's own checks after
    # it fills in the provider defaults, all offline.
    jsonschema.validate(config, _ray_schema())
    validate_config(config)
    validate_config(prepare_config(config))

    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert workers and all(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    assert "GPU" not in types[config["head_node_type"]]["resources"]
    assert types[config["head_node_type"]]["resources"].get("trial_slot", 0) >= 1
    for spec in workers.values():
        assert 0 <= spec["min_workers"] <= spec["max_workers"] <= config["max_workers"]
    assert sum(v.get("min_workers", 0) for v in workers.values()) <= config["max_workers"]


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_yaml_keeps_token_auth_and_a_local_dashboard(path: Path) -> None:
    (config,) = _load_all(path)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    for command in ray_starts:
        assert re.search(r"\bRAY_AUTH_MODE=token\b", command)
    (head_start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start
    # The token travels by file_mounts from a local directory to Ray's default token path.
    assert any("secrets" in remote for remote in config["file_mounts"])
    assert any("~/.ray/auth_token" in c and "600" in c for c in config["setup_commands"])
    # The project is installed by the setup commands with the repository's constraints.
    setup = " ".join(config["head_setup_commands"] + config["worker_setup_commands"])
    assert "constraints" in setup and "bitsweep" in setup


# --- KubeRay manifests --------------------------------------------------------------------------

# Minimal schemas of the fields used here, written from the KubeRay CRD API reference for
# ray.io/v1 (https://docs.ray.io/en/master/cluster/kubernetes/references/api.html, KubeRay
# v1.5-v1.7: RayClusterSpec, HeadGroupSpec, WorkerGroupSpec, AuthOptions, RayJobSpec). Objects
# list the documented fields and refuse others, so a misspelt key fails here instead of being
# dropped silently by the API server's pruning.
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "object", "required": ["name", "image"]},
                }
            },
        },
    },
    "additionalProperties": False,
}
_RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
_RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "properties": {
        "authOptions": {
            "type": "object",
            "properties": {
                "mode": {"enum": ["disabled", "token"]},
                "secretName": {"type": "string"},
                "enableK8sTokenAuth": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        "autoscalerOptions": {
            "type": "object",
            "properties": {
                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                "version": {"enum": ["v1", "v2"]},
                "resources": {"type": "object"},
                "image": {"type": "string"},
                "imagePullPolicy": {"type": "string"},
                "securityContext": {"type": "object"},
                "env": {"type": "array"},
                "envFrom": {"type": "array"},
                "volumeMounts": {"type": "array"},
            },
            "additionalProperties": False,
        },
        "enableInTreeAutoscaling": {"type": "boolean"},
        "gcsFaultToleranceOptions": {"type": "object"},
        "headServiceAnnotations": {"type": "object"},
        "managedBy": {"type": "string"},
        "rayVersion": {"type": "string"},
        "suspend": {"type": "boolean"},
        "headGroupSpec": {
            "type": "object",
            "required": ["template", "rayStartParams"],
            "properties": {
                "template": _POD_TEMPLATE,
                "rayStartParams": _RAY_START_PARAMS,
                "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "headService": {"type": "object"},
                "enableIngress": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        "workerGroupSpecs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["groupName", "template", "rayStartParams"],
                "properties": {
                    "groupName": {"type": "string"},
                    "replicas": {"type": "integer", "minimum": 0},
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "maxReplicas": {"type": "integer", "minimum": 0},
                    "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                    "numOfHosts": {"type": "integer", "minimum": 1},
                    "suspend": {"type": "boolean"},
                    "scaleStrategy": {"type": "object"},
                    "rayStartParams": _RAY_START_PARAMS,
                    "template": _POD_TEMPLATE,
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
KUBERAY_SCHEMAS: dict[str, dict[str, Any]] = {
    "RayCluster": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayCluster"},
            "metadata": _METADATA,
            "spec": _RAY_CLUSTER_SPEC,
        },
        "additionalProperties": False,
    },
    "RayJob": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayJob"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["entrypoint"],
                "properties": {
                    "entrypoint": {"type": "string", "minLength": 1},
                    "rayClusterSpec": _RAY_CLUSTER_SPEC,
                    "clusterSelector": {"type": "object"},
                    "submissionMode": {
                        "enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]
                    },
                    "submitterPodTemplate": _POD_TEMPLATE,
                    "submitterConfig": {"type": "object"},
                    "shutdownAfterJobFinishes": {"type": "boolean"},
                    "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                    "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                    "backoffLimit": {"type": "integer", "minimum": 0},
                    "runtimeEnvYAML": {"type": "string"},
                    "jobId": {"type": "string"},
                    "metadata": {"type": "object"},
                    "entrypointNumCpus": {"type": "number"},
                    "entrypointNumGpus": {"type": "number"},
                    "entrypointResources": {"type": "string"},
                    "deletionStrategy": {"type": "object"},
                    "managedBy": {"type": "string"},
                    "suspend": {"type": "boolean"},
                },
                "oneOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}],
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
    # Kubernetes core / networking (https://kubernetes.io/docs/reference/kubernetes-api/).
    "NetworkPolicy": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "networking.k8s.io/v1"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["podSelector"],
                "properties": {
                    "podSelector": {"type": "object"},
                    "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
                    "ingress": {"type": "array"},
                    "egress": {"type": "array"},
                },
                "additionalProperties": False,
            },
        },
    },
    "PersistentVolumeClaim": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "v1"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["accessModes", "resources"],
                "properties": {"accessModes": {"contains": {"const": "ReadWriteMany"}}},
            },
        },
    },
    "ConfigMap": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "data"],
        "properties": {
            "apiVersion": {"const": "v1"},
            "metadata": _METADATA,
            "data": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
}


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda p: p.name)
def test_kuberay_manifests_match_the_crd_fields(path: Path) -> None:
    docs = _load_all(path)
    assert docs
    for doc in docs:
        assert doc.get("kind") in KUBERAY_SCHEMAS, f"{path.name}: unexpected kind {doc.get('kind')}"
        jsonschema.validate(doc, KUBERAY_SCHEMAS[doc["kind"]])


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = [(f"{p.name}:RayCluster", d["spec"]) for p, d in _by_kind("RayCluster")]
    specs += [(f"{p.name}:RayJob", d["spec"]["rayClusterSpec"]) for p, d in _by_kind("RayJob")]
    return specs


def _pod_templates(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def test_kuberay_clusters_have_token_auth_storage_and_gpu_workers() -> None:
    specs = _cluster_specs()
    assert {name.split(":")[1] for name, _ in specs} == {"RayCluster", "RayJob"}
    (pvc,) = [d for _, d in _by_kind("PersistentVolumeClaim")]
    for name, spec in specs:
        assert spec["authOptions"]["mode"] == "token", name
        head = spec["headGroupSpec"]
        host = head["rayStartParams"].get("dashboard-host")
        assert host and not WILDCARD.search(f"--dashboard-host={host}"), name
        # $(MY_POD_IP) is expanded by Kubernetes from the container's own env.
        head_env = {e["name"] for e in head["template"]["spec"]["containers"][0].get("env", [])}
        for ref in re.findall(r"\$\((\w+)\)", host):
            assert ref in head_env, name
        assert "trial_slot" in head["rayStartParams"].get("resources", ""), name
        for group in spec["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert int(limits.get("nvidia.com/gpu", 0)) >= 1, name
        for template in _pod_templates(spec):
            pod = template["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            mounts = pod["containers"][0].get("volumeMounts", [])
            assert {m["name"] for m in mounts} <= set(volumes), name
            claims = [
                m["mountPath"]
                for m in mounts
                if volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName")
                == pvc["metadata"]["name"]
            ]
            assert claims == ["/mnt/bitsweep"], name


def test_rayjob_runs_the_sweep_file_from_its_configmap() -> None:
    from orchestrator.spec import build_sweep

    ((_, job),) = _by_kind("RayJob")
    configmaps = {d["metadata"]["name"]: d for _, d in _by_kind("ConfigMap")}
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    match = re.fullmatch(r"bitsweep run (\S+)", spec["entrypoint"])
    assert match, spec["entrypoint"]
    sweep_path = Path(match.group(1))
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head["volumes"]}
    (mount,) = [
        m for m in head["containers"][0]["volumeMounts"] if "configMap" in volumes[m["name"]]
    ]
    assert Path(mount["mountPath"]) == sweep_path.parent
    configmap = configmaps[volumes[mount["name"]]["configMap"]["name"]]
    document = yaml.safe_load(configmap["data"][sweep_path.name])
    # The sweep file is one bitsweep accepts, with storage on the shared volume and a
    # tracking server rather than a pod-local store.
    sweep = build_sweep(document)
    assert sweep.storage.path.startswith("/mnt/bitsweep/")
    assert sweep.tracking.uri and sweep.tracking.uri.startswith("http")


def test_networkpolicy_admits_only_bitsweep_pods_submitter_and_operator() -> None:
    ((_, policy),) = _by_kind("NetworkPolicy")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for name, spec in _cluster_specs():
        for template in _pod_templates(spec):
            labels = template.get("metadata", {}).get("labels", {})
            assert selector.items() <= labels.items(), name
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    # Ray pods among themselves: every port. Everyone else admitted: dashboard and client only.
    open_rules = [r for r in rules if "ports" not in r]
    assert [r["from"] for r in open_rules] == [[{"podSelector": {"matchLabels": selector}}]]
    for rule in rules:
        if "ports" in rule:
            assert {p["port"] for p in rule["ports"]} <= {8265, 10001}
            for peer in rule["from"]:
                # Each peer names its pods or its namespace; an empty selector admits all.
                assert peer.get("podSelector") or peer.get("namespaceSelector"), peer
                assert "ipBlock" not in peer
    ((_, job),) = _by_kind("RayJob")
    submitter = job["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    admitted = [
        p["podSelector"]["matchLabels"] for r in rules for p in r["from"] if "podSelector" in p
    ]
    assert any(lbl.items() <= submitter.items() for lbl in admitted)


# --- every file ---------------------------------------------------------------------------------

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
    for doc in _load_all(path):
        for value in _strings(doc):
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


# --- the local scripts for real -----------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
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


def _gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_local_head_and_worker_start_authenticate_and_stop_by_pid(tmp_path: Path) -> None:
    gcs, dash, head_agent, client, worker_agent = _free_ports(5)
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
    head_env = _script_env(
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
    worker_env = _script_env(
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
            env=_script_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        shutil.rmtree(ray_tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    assert stop.returncode == 0, stop.stderr
    assert not _gone(recorded), "processes of the local cluster outlived stop.sh"
    for node in ("head", "worker-1"):
        assert not (state / node / "pid").exists()
        assert not (state / node / "sid").exists()
    assert not (state / "cluster.env").exists()
    assert not [p for sid in sessions for p in _session_pids(sid)]
    assert elapsed < 60, f"the local cluster round trip took {elapsed:.0f}s"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_mlflow_server_script_serves_and_stops_by_pid(tmp_path: Path) -> None:
    (port,) = _free_ports(1)
    env = _script_env(tmp_path, BITSWEEP_MLFLOW_PORT=str(port), BITSWEEP_START_TIMEOUT="60")
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
    assert recorded and not _gone(recorded)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_node_that_never_gets_ready_is_not_left_behind(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("0" * 8)
    token.chmod(0o600)
    dead_port, agent_port = _free_ports(2)
    env = _script_env(
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
