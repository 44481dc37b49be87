"""The KubeRay manifests under cluster/kuberay/: the CRD fields, token auth, shared storage, GPU
workers, the RayJob's sweep file and the NetworkPolicy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cluster_fixtures import KUBERAY_FILES, WILDCARD, by_kind, load_all

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
    docs = load_all(path)
    assert docs
    for doc in docs:
        assert doc.get("kind") in KUBERAY_SCHEMAS, f"{path.name}: unexpected kind {doc.get('kind')}"
        jsonschema.validate(doc, KUBERAY_SCHEMAS[doc["kind"]])


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = [(f"{p.name}:RayCluster", d["spec"]) for p, d in by_kind("RayCluster")]
    specs += [(f"{p.name}:RayJob", d["spec"]["rayClusterSpec"]) for p, d in by_kind("RayJob")]
    return specs


def _pod_templates(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def test_kuberay_clusters_have_token_auth_storage_and_gpu_workers() -> None:
    specs = _cluster_specs()
    assert {name.split(":")[1] for name, _ in specs} == {"RayCluster", "RayJob"}
    (pvc,) = [d for _, d in by_kind("PersistentVolumeClaim")]
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

    ((_, job),) = by_kind("RayJob")
    configmaps = {d["metadata"]["name"]: d for _, d in by_kind("ConfigMap")}
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
    ((_, policy),) = by_kind("NetworkPolicy")
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
    ((_, job),) = by_kind("RayJob")
    submitter = job["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    admitted = [
        p["podSelector"]["matchLabels"] for r in rules for p in r["from"] if "podSelector" in p
    ]
    assert any(lbl.items() <= submitter.items() for lbl in admitted)
