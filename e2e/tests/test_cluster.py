"""The API server accepts the CRDs and enforces them; the fake nodes schedule GPU pods."""

from __future__ import annotations

import ipaddress
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from e2e.conftest import E2ECluster
from e2e.harness.kube import Kubectl, KubectlError, is_true
from e2e.harness.podrunner import kubectl_getter, kubectl_token_requester, run_pod

pytestmark = pytest.mark.e2e


def model_deployment(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"name": "tiny-llama", "uri": "pvc://models/tiny-llama", "version": "1"},
        "runtime": "onnx",
        "precision": "int8",
        "accelerator": {"type": "cpu"},
    }
    base.update(spec)
    return {
        "apiVersion": "clawdbot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": base,
    }


def test_crds_are_served_with_defaults(crds: None, kube: Kubectl) -> None:
    kube.apply(model_deployment("ok"))
    obj = kube.get("modeldeployment", "ok")
    # Defaults come from the generated schema, applied by the API server itself.
    assert obj["spec"]["replicas"] == 1
    assert obj["spec"]["accelerator"]["memoryFraction"] == 0.9
    # Short name and printer columns are served.
    table = kube.run("get", "md", "ok").stdout
    assert "RUNTIME" in table and "onnx" in table
    # A minimal RoutingPolicy: list fields default to [] so the CEL rules can read them.
    kube.apply({"apiVersion": "clawdbot.io/v1alpha1", "kind": "RoutingPolicy",
                "metadata": {"name": "minimal"}, "spec": {}})  # fmt: skip
    policy = kube.get("routingpolicy", "minimal")
    assert policy["spec"]["rules"] == [] and policy["spec"]["defaultTarget"] == "adaptive"


def test_invalid_model_deployment_is_rejected_naming_the_field(crds: None, kube: Kubectl) -> None:
    with pytest.raises(KubectlError) as enum_error:
        kube.apply(model_deployment("bad-runtime", runtime="triton"))
    assert "spec.runtime" in enum_error.value.stderr
    assert "triton" in enum_error.value.stderr

    # A cross-field CEL rule: minReplicas above maxReplicas.
    bad_scale = model_deployment("bad-scale", autoscaling={"minReplicas": 5, "maxReplicas": 2})
    with pytest.raises(KubectlError) as cel_error:
        kube.apply(bad_scale)
    assert "spec.autoscaling" in cel_error.value.stderr
    assert "minReplicas" in cel_error.value.stderr
    assert kube.get_or_none("modeldeployment", "bad-scale") is None


def test_invalid_routing_policy_is_rejected(crds: None, kube: Kubectl) -> None:
    policy = {
        "apiVersion": "clawdbot.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "bad"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "chat"}},
            "rules": [{"name": "r", "match": {"maxTokens": -1}, "target": "local"}],
        },
    }
    with pytest.raises(KubectlError) as err:
        kube.apply(policy)
    assert "maxTokens" in err.value.stderr


def gpu_deployment(name: str, resource: str | None, replicas: int) -> dict[str, Any]:
    limits = {resource: 1} if resource else {"cpu": "100m"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {"name": "main", "image": "example.invalid/model:1",
                         "resources": {"limits": limits}}
                    ]
                },
            },
        },
    }  # fmt: skip


def ready_replicas(n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda d: d.get("status", {}).get("readyReplicas") == n


def node_accelerator(kube: Kubectl, node: str) -> str:
    labels = kube.get("node", node)["metadata"]["labels"]
    return str(labels.get("clawdbot.io/accelerator", ""))


def test_gpu_pods_land_on_gpu_nodes_only(local_cluster: E2ECluster, kube: Kubectl) -> None:
    kube.apply(gpu_deployment("nv", "nvidia.com/gpu", 3))
    kube.apply(gpu_deployment("amd", "amd.com/gpu", 2))
    for name, replicas in (("nv", 3), ("amd", 2)):
        kube.wait_for("deployment", name, ready_replicas(replicas), what=f"{replicas} ready")
    pods = kube.get("pods")["items"]
    placed: dict[str, set[str]] = {"nv": set(), "amd": set()}
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        ip = ipaddress.ip_address(pod["status"]["podIP"])
        assert ip.is_loopback, f"pod IP {ip} is not on loopback"
        placed[pod["metadata"]["labels"]["app"]].add(
            node_accelerator(kube, pod["spec"]["nodeName"])
        )
    assert placed == {"nv": {"nvidia"}, "amd": {"amd"}}


def test_unsatisfiable_gpu_request_stays_pending(local_cluster: E2ECluster, kube: Kubectl) -> None:
    deployment = gpu_deployment("greedy", None, 1)
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] = {
        "nvidia.com/gpu": 64
    }
    kube.apply(deployment)
    deadline = time.monotonic() + 60
    messages: list[str] = []
    while not messages and time.monotonic() < deadline:
        pods = kube.get("pods", None, "-l", "app=greedy")["items"]
        messages = [
            c.get("message", "")
            for p in pods
            for c in p.get("status", {}).get("conditions", [])
            if c.get("reason") == "Unschedulable"
        ]
        time.sleep(0.5)
    assert messages, "the pod was never reported Unschedulable"
    assert "nvidia.com/gpu" in messages[0]
    assert all(p["status"]["phase"] == "Pending" for p in pods)


def test_pod_process_serves_on_its_pod_ip(local_cluster: E2ECluster, kube: Kubectl) -> None:
    """The pod runner starts a pod's command at its loopback IP with its ConfigMap mounted."""
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "site"},
            "data": {"index.html": "hello from a configmap"},
        }
    )
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web"},
            "spec": {
                "containers": [
                    {
                        "name": "web",
                        "image": "python:3.11-slim",
                        "command": ["python", "-m", "http.server", "8080"],
                        "args": ["--bind", "$(POD_IP)", "--directory", "/srv/site"],
                        "env": [
                            {"name": "POD_IP",
                             "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                        ],
                        "ports": [{"containerPort": 8080}],
                        "volumeMounts": [{"name": "site", "mountPath": "/srv/site"}],
                    }
                ],
                "volumes": [{"name": "site", "configMap": {"name": "site"}}],
            },
        }
    )  # fmt: skip
    pod = kube.wait_for("pod", "web", lambda p: is_true(p, "Ready"), what="Ready")
    getter = kubectl_getter(local_cluster.kubectl)
    token = kubectl_token_requester(local_cluster.kubectl)
    with run_pod(pod, getter, argv0_map={"python": sys.executable}, token=token) as running:
        url = f"http://{running.pod_ip}:8080/index.html"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.read().decode() == "hello from a configmap"
