"""Routing scenarios' parts: the cloud stand-in, the operator with its webhook and discovery
stream, the model servers and the injected sidecar as real processes at pod IPs.

Shared by the routing e2e tests (one module per scenario family).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import openai

from clawdbot_testing.models.tinyembed import build_tiny_embed
from clawdbot_testing.models.tinylm import build_tiny_lm
from e2e.conftest import REPO_ROOT, E2ECluster
from e2e.harness.kube import Kubectl, is_true
from e2e.harness.operator import Operator, free_port, run_operator
from e2e.harness.podrunner import RunningPod, kubectl_getter, kubectl_token_requester, run_pod
from e2e.harness.waits import wait_http_ok, wait_ready_pod

BIN = Path(sys.executable).parent
API_KEY = "sk-e2e-cloud-key-0123456789"
WEBHOOK_CONFIG = "clawdbot-e2e-injector"
INJECT_LABELS = {"app": "chat", "clawdbot.io/inject": "enabled"}
MODEL_SELECTOR = "clawdbot.io/model-deployment=tiny-chat"
EMAIL = "maria.rossi@example.org"
# Over the policy's 512-token local rule: the cloud answers.
LONG = "Summarise our quarterly numbers in detail, region by region. " * 60


@contextlib.contextmanager
def cloud_stub(log_path: Path) -> Iterator[str]:
    """The loopback stand-in for the cloud (``clawdbot-cloud-standin``); its base URL."""
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "clawdbot-cloud-standin"), "--port", str(port),
             "--api-key", API_KEY],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    urllib.request.urlopen(f"{url}/_stub/requests", timeout=1).close()
                    break
                except OSError as exc:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"the cloud stub did not start; see {log_path}") from exc
                    time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def check_local_and_cloud(
    client: openai.OpenAI, cloud_url: str, log_tail: Callable[[], str]
) -> None:
    """The routing scenario through a ready sidecar: a short prompt answered by the local
    model, a long one by the cloud, which receives the planted e-mail address redacted while
    the client gets it back in the answer."""
    short = client.chat.completions.with_raw_response.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hello"}], max_tokens=8
    )
    assert short.headers["x-clawdbot-target"] == "local", log_tail()
    assert short.parse().model == "tiny-chat"
    long = client.chat.completions.with_raw_response.create(
        model="tiny-chat", messages=[{"role": "user", "content": f"{LONG} Reply to {EMAIL}."}]
    )
    assert long.headers["x-clawdbot-target"] == "cloud", log_tail()
    assert EMAIL in (long.parse().choices[0].message.content or "")
    sent = stub_requests(cloud_url)
    assert len(sent) == 1 and EMAIL not in json.dumps(sent)


def stub_requests(url: str) -> list[dict[str, Any]]:
    """What the cloud stand-in received."""
    with urllib.request.urlopen(f"{url}/_stub/requests", timeout=5) as resp:
        data: list[dict[str, Any]] = json.loads(resp.read())
        return data


def webhook_configuration(namespace: str, port: int) -> dict[str, Any]:
    """The webhook as the chart declares it, but called by URL (the operator is a local
    process, not behind a Service) and scoped to the test's namespace."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG},
        "webhooks": [
            {
                "name": "inject.clawdbot.io",
                "clientConfig": {"url": f"https://localhost:{port}/inject-sidecar"},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": namespace}
                },
                "objectSelector": {"matchLabels": {"clawdbot.io/inject": "enabled"}},
                # Fail, not the chart's Ignore: a broken webhook must fail this test.
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }
        ],
    }  # fmt: skip


@contextlib.contextmanager
def routing_operator(
    cluster: E2ECluster,
    namespace: str,
    log: Path,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[Operator]:
    """The operator watching ``namespace`` with its webhook (registered for the namespace,
    caBundle set by the operator) and discovery stream on loopback ports; ``env`` adds to
    its environment (its namespace is ``<namespace>-op``)."""
    assert cluster.kubeconfig
    op_ns = f"{namespace}-op"
    cluster.kubectl.apply({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": op_ns}})  # fmt: skip
    # The configuration exists first, so the operator patches its caBundle at start.
    cluster.kubectl.apply(webhook_configuration(namespace, 1))
    environ = {"POD_NAMESPACE": op_ns, "CLAWDBOT_WEBHOOK_CONFIGURATION": WEBHOOK_CONFIG,
               **(env or {})}  # fmt: skip
    try:
        with run_operator(cluster.kubeconfig, namespace, log, routing=True, env=environ,
                          cwd=REPO_ROOT, extra_args=extra_args) as op:  # fmt: skip
            # Now point the webhook at the port the operator got (the caBundle stays).
            config = cluster.kubectl.get("mutatingwebhookconfiguration", WEBHOOK_CONFIG)
            hook = config["webhooks"][0]
            assert hook["clientConfig"].get("caBundle"), "the operator did not set the caBundle"
            patch = [{"op": "replace", "path": "/webhooks/0/clientConfig/url",
                      "value": f"https://localhost:{op.webhook_port}/inject-sidecar"}]  # fmt: skip
            cluster.kubectl.run(
                "patch", "mutatingwebhookconfiguration", WEBHOOK_CONFIG, "--type=json",
                "-p", json.dumps(patch),
            )  # fmt: skip
            yield op
    finally:
        cluster.kubectl.delete("mutatingwebhookconfiguration", WEBHOOK_CONFIG)
        cluster.kubectl.delete("namespace", op_ns)


def deploy(
    kube: Kubectl,
    cloud_stub: str,
    models: Path,
    autoscaling: dict[str, Any] | None = None,
    *,
    embeddings: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Secret, the ModelDeployment (the project's tiny ONNX model "baked into the image"
    at /models), the RoutingPolicy and the labelled client pod; (model pod, client pod).
    With ``embeddings``, a second ModelDeployment ``tiny-embed`` (the project's tiny
    sentence-embedding model) is a local model of the policy too."""
    build_tiny_lm(models)
    local_models = [{"name": "tiny-chat"}]
    if embeddings:
        build_tiny_embed(models)
        local_models.append({"name": "tiny-embed"})
        kube.apply(
            {"apiVersion": "clawdbot.io/v1alpha1", "kind": "ModelDeployment",
             "metadata": {"name": "tiny-embed"},
             "spec": {"model": {"name": "tiny-embed", "uri": "file:///models"},
                      "runtime": "onnx", "precision": "fp16", "accelerator": {"type": "cpu"}}}
        )  # fmt: skip
    kube.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cloud"},
         "stringData": {"api-key": API_KEY}}
    )  # fmt: skip
    spec: dict[str, Any] = {
        "model": {"name": "tiny-chat", "uri": "file:///models"},
        "runtime": "onnx", "precision": "fp16", "accelerator": {"type": "cpu"},
    }  # fmt: skip
    if autoscaling:
        spec["autoscaling"] = autoscaling
    kube.apply(
        {"apiVersion": "clawdbot.io/v1alpha1", "kind": "ModelDeployment",
         "metadata": {"name": "tiny-chat"}, "spec": spec}
    )  # fmt: skip
    kube.apply(
        {"apiVersion": "clawdbot.io/v1alpha1", "kind": "RoutingPolicy",
         "metadata": {"name": "chat"},
         "spec": {
             "podSelector": {"matchLabels": {"app": "chat"}},
             "localModels": local_models,
             "cloud": {"baseURL": f"{cloud_stub}/v1", "model": "gpt-4o-mini", "maxRetries": 0,
                       "apiKeySecretRef": {"name": "cloud", "key": "api-key"}},
             "rules": [{"name": "short", "match": {"maxTokens": 512}, "target": "local"},
                       {"name": "long", "match": {"maxTokens": 4096}, "target": "cloud"}],
             "audit": {"enabled": False},
         }}
    )  # fmt: skip
    model_pod = wait_ready_pod(kube, MODEL_SELECTOR)

    # The client pod: labelled, created through the API server, so the webhook runs.
    kube.apply(
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "chat-app", "labels": INJECT_LABELS},
         "spec": {"containers": [{"name": "app", "image": "shop/chat:1",
                                  "command": ["sleep", "infinity"]}]}}
    )  # fmt: skip
    client_pod = kube.wait_for("pod", "chat-app", lambda p: is_true(p, "Ready"), what="Ready")
    return model_pod, client_pod


def model_server(
    cluster: E2ECluster, pod: dict[str, Any], models: Path, **kw: Any
) -> contextlib.AbstractContextManager[RunningPod]:
    """Run a model pod's ONNX runtime at its pod IP, with ``models`` as the image's /models."""
    runtime = {"clawdbot-runtime": str(BIN / "clawdbot-runtime")}
    return run_pod(
        pod, kubectl_getter(cluster.kubectl), argv0_map=runtime, image_files={"/models": models},
        **kw,
    )  # fmt: skip


@contextlib.contextmanager
def sidecar_of(
    cluster: E2ECluster, client_pod: dict[str, Any], operator: Operator, **env: str
) -> Iterator[tuple[str, RunningPod]]:
    """Run the client pod's injected sidecar at its pod IP; once ready, yields its base URL
    and the process (whose log tail explains failures)."""
    with run_pod(
        client_pod, kubectl_getter(cluster.kubectl), container="clawdbot-sidecar",
        token=kubectl_token_requester(cluster.kubectl), pod_loopback=True,
        entrypoint=[str(BIN / "clawdbot-sidecar")], wait_port=False,
        extra_env={"CLAWDBOT_DISCOVERY_ADDRESS": f"localhost:{operator.discovery_port}", **env},
    ) as sidecar:  # fmt: skip
        base = f"http://{client_pod['status']['podIP']}:8088"
        wait_http_ok(f"{base}/readyz", log_tail=sidecar.log_tail)
        yield base, sidecar


def metric(url: str, name: str) -> float:
    """The first sample of ``name`` (a full series name, labels included) at ``url``/metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name):
                return float(line.split()[-1])
    return 0.0


def ready_model_pods(kube: Kubectl) -> list[dict[str, Any]]:
    """The tiny-chat ModelDeployment's pods that are Ready and not being deleted."""
    pods = kube.get("pods", None, "-l", MODEL_SELECTOR)["items"]
    return [p for p in pods if is_true(p, "Ready") and not p["metadata"].get("deletionTimestamp")]
