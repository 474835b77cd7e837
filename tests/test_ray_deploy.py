"""deploy/rayservice.yaml: the KubeRay manifest is well-formed and runs the application this package builds.

With kubectl and a cluster that has the KubeRay CRDs, `kubectl apply --dry-run=client` must accept it. Without one
(kubectl's client-side dry run still asks the API server for the resource types), a JSON Schema check of every
RayService field the manifest uses, Ray Serve's own schema for the Serve config, and a build of the application
from its args stand in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "rayservice.yaml"

try:
    import jsonschema
    from ray.serve.schema import ServeDeploySchema

    from fast_tts.server.cli import parse_serve_options
    from fast_tts.server.ray_proxy import CALLBACK_ENV, CALLBACK_PATH
    from fast_tts.server.ray_serve import build_app, deployment_options
except ImportError as exc:  # the `ray` extra is part of `test`: CI must not skip these
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip(f"Ray Serve is not installed: {exc}", allow_module_level=True)

_CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "image": {"type": "string", "minLength": 1},
        "env": {"type": "array", "items": {"type": "object", "required": ["name", "value"],
                                           "properties": {"name": {"type": "string"}, "value": {"type": "string"}}}},
        "ports": {"type": "array", "items": {"type": "object", "required": ["containerPort"], "properties": {
            "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
            "name": {"type": "string", "maxLength": 15}}}},
        "resources": {"type": "object", "properties": {"requests": {"type": "object"}, "limits": {"type": "object"}},
                      "additionalProperties": False},
        "volumeMounts": {"type": "array", "items": {"type": "object", "required": ["name", "mountPath"]}},
    },
    "additionalProperties": False,
}
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {"spec": {"type": "object", "required": ["containers"], "properties": {
        "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
        "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    }, "additionalProperties": False}},
}
_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}  # KubeRay wants strings here
RAYSERVICE = {  # the fields of ray.io/v1 RayService this manifest uses, with their types and constraints
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["serveConfigV2", "rayClusterConfig"],
            "additionalProperties": False,
            "properties": {
                "serveConfigV2": {"type": "string"},
                "rayClusterConfig": {
                    "type": "object",
                    "required": ["headGroupSpec"],
                    "additionalProperties": False,
                    "properties": {
                        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "headGroupSpec": {"type": "object", "required": ["rayStartParams", "template"],
                                          "additionalProperties": False,
                                          "properties": {"rayStartParams": _START_PARAMS, "template": _POD_TEMPLATE}},
                        "workerGroupSpecs": {"type": "array", "items": {
                            "type": "object", "required": ["groupName", "rayStartParams", "template"],
                            "additionalProperties": False,
                            "properties": {
                                "groupName": {"type": "string"},
                                "replicas": {"type": "integer", "minimum": 0},
                                "minReplicas": {"type": "integer", "minimum": 0},
                                "maxReplicas": {"type": "integer", "minimum": 1},
                                "rayStartParams": _START_PARAMS,
                                "template": _POD_TEMPLATE,
                            }}},
                    },
                },
            },
        },
    },
}
PVC = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "v1"},
        "kind": {"const": "PersistentVolumeClaim"},
        "spec": {"type": "object", "required": ["accessModes", "resources"], "properties": {
            "accessModes": {"type": "array", "contains": {"const": "ReadWriteMany"}}}},
    },
}


def _documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def _pods(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in
                                                              cluster.get("workerGroupSpecs", [])]


def test_manifest_matches_the_rayservice_fields_it_uses() -> None:
    docs = _documents()
    assert set(docs) == {"RayService", "PersistentVolumeClaim"}
    jsonschema.validate(docs["RayService"], RAYSERVICE)
    jsonschema.validate(docs["PersistentVolumeClaim"], PVC)
    for group in docs["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    import ray

    major, minor, _ = docs["RayService"]["spec"]["rayClusterConfig"]["rayVersion"].split(".")
    assert (int(major), int(minor)) == tuple(int(p) for p in ray.__version__.split(".")[:2])


def test_serve_config_builds_this_package_application() -> None:
    service = _documents()["RayService"]
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)  # Ray Serve's own schema of a config file
    (app,) = config["applications"]
    assert app["import_path"] == "fast_tts.server.ray_serve:build_app"
    build_app(app["args"])  # the args are serve flags this version accepts
    options = deployment_options(parse_serve_options(app["args"]))
    assert options["autoscaling_config"]["min_replicas"] == 1 and options["autoscaling_config"]["max_replicas"] == 4
    assert options["ray_actor_options"]["num_cpus"] == 2


def test_every_pod_has_the_proxy_middleware_and_the_shared_speakers() -> None:
    docs = _documents()
    service = docs["RayService"]
    speakers_dir = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["speakers_dir"]
    for pod in _pods(service):
        (container,) = pod["containers"]
        assert {"name": CALLBACK_ENV, "value": CALLBACK_PATH} in container["env"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        (volume,) = [name for name, path in mounts.items() if path == speakers_dir]
        claim = docs["PersistentVolumeClaim"]["metadata"]["name"]
        assert volumes[volume]["persistentVolumeClaim"]["claimName"] == claim


def _kubectl_cluster_with_kuberay() -> bool:
    if shutil.which("kubectl") is None:
        return False
    try:
        found = subprocess.run(["kubectl", "api-resources", "--api-group=ray.io", "--request-timeout=5s"],
                               capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return False
    return found.returncode == 0 and "rayservices" in found.stdout


def test_kubectl_client_dry_run_accepts_the_manifest() -> None:
    if not _kubectl_cluster_with_kuberay():
        pytest.skip("no kubectl with a reachable cluster that has the KubeRay CRDs (the schema checks above apply)")
    result = subprocess.run(["kubectl", "apply", "--dry-run=client", "-f", str(MANIFEST)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
