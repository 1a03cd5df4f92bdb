"""Routing in the cluster, end to end, with real processes at pod IPs.

The operator (a real process) serves the injection webhook and the discovery stream; the
API server calls the webhook when the client pod is created. The ModelDeployment's pod runs
the real ONNX runtime on the project's tiny model; the injected sidecar runs as a real
process, authenticates to the operator with a pod-bound token (checked by TokenReview) and
gets its policy, endpoints and cloud key from the stream. Requests go through the real
``openai`` client; the cloud is the loopback stub.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from clawdbot_runtime.tinylm import build_tiny_lm
from e2e.conftest import REPO_ROOT, E2ECluster
from e2e.harness.kube import Kubectl, is_true
from e2e.harness.operator import Operator, free_port, run_operator
from e2e.harness.podrunner import RunningPod, kubectl_getter, kubectl_token_requester, run_pod
from e2e.harness.waits import wait_http_ok, wait_ready_pod

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
API_KEY = "sk-e2e-cloud-key-0123456789"
EMAIL = "maria.rossi@example.org"
LONG = "Summarise our quarterly numbers in detail, region by region. " * 60
WEBHOOK_CONFIG = "clawdbot-e2e-injector"
INJECT_LABELS = {"app": "chat", "clawdbot.io/inject": "enabled"}


@pytest.fixture
def cloud_stub(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "cloud.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "clawdbot-sidecar"), "cloud-stub", "--port", str(port), "--api-key", API_KEY],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stub/requests", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("the cloud stub did not start")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def stub_requests(url: str) -> list[dict[str, Any]]:
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


@pytest.fixture
def operator(
    local_cluster: E2ECluster, crds: None, namespace: str, tmp_path: Path
) -> Iterator[Operator]:
    assert local_cluster.kubeconfig
    op_ns = f"{namespace}-op"
    local_cluster.kubectl.apply({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": op_ns}})  # fmt: skip
    # The configuration exists first, so the operator patches its caBundle at start.
    local_cluster.kubectl.apply(webhook_configuration(namespace, 1))
    env = {
        "POD_NAMESPACE": op_ns,
        "CLAWDBOT_WEBHOOK_CONFIGURATION": WEBHOOK_CONFIG,
    }
    with contextlib.ExitStack() as stack:
        try:
            op = stack.enter_context(
                run_operator(local_cluster.kubeconfig, namespace, tmp_path / "operator.log",
                             routing=True, env=env, cwd=REPO_ROOT)
            )  # fmt: skip
        except RuntimeError as exc:
            pytest.fail(str(exc))
        # Now point the webhook at the port the operator got (the caBundle stays).
        config = local_cluster.kubectl.get("mutatingwebhookconfiguration", WEBHOOK_CONFIG)
        hook = config["webhooks"][0]
        assert hook["clientConfig"].get("caBundle"), "the operator did not set the caBundle"
        patch = [{"op": "replace", "path": "/webhooks/0/clientConfig/url",
                  "value": f"https://localhost:{op.webhook_port}/inject-sidecar"}]  # fmt: skip
        local_cluster.kubectl.run(
            "patch", "mutatingwebhookconfiguration", WEBHOOK_CONFIG, "--type=json",
            "-p", json.dumps(patch),
        )  # fmt: skip
        yield op
    local_cluster.kubectl.delete("mutatingwebhookconfiguration", WEBHOOK_CONFIG)
    local_cluster.kubectl.delete("namespace", op_ns)


def deploy(kube: Kubectl, cloud_stub: str, models: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Secret, the ModelDeployment (the project's tiny ONNX model "baked into the image"
    at /models), the RoutingPolicy and the labelled client pod; (model pod, client pod)."""
    build_tiny_lm(models)
    kube.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cloud"},
         "stringData": {"api-key": API_KEY}}
    )  # fmt: skip
    kube.apply(
        {"apiVersion": "clawdbot.io/v1alpha1", "kind": "ModelDeployment",
         "metadata": {"name": "tiny-chat"},
         "spec": {"model": {"name": "tiny-chat", "uri": "file:///models"},
                  "runtime": "onnx", "precision": "fp16", "accelerator": {"type": "cpu"}}}
    )  # fmt: skip
    kube.apply(
        {"apiVersion": "clawdbot.io/v1alpha1", "kind": "RoutingPolicy",
         "metadata": {"name": "chat"},
         "spec": {
             "podSelector": {"matchLabels": {"app": "chat"}},
             "localModels": [{"name": "tiny-chat"}],
             "cloud": {"baseURL": f"{cloud_stub}/v1", "model": "gpt-4o-mini", "maxRetries": 0,
                       "apiKeySecretRef": {"name": "cloud", "key": "api-key"}},
             "rules": [{"name": "short", "match": {"maxTokens": 512}, "target": "local"},
                       {"name": "long", "match": {"maxTokens": 4096}, "target": "cloud"}],
             "audit": {"enabled": False},
         }}
    )  # fmt: skip
    model_pod = wait_ready_pod(kube, "clawdbot.io/model-deployment=tiny-chat")

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


def test_labelled_pod_routes_local_and_cloud_through_the_injected_sidecar(
    local_cluster: E2ECluster,
    kube: Kubectl,
    operator: Operator,
    cloud_stub: str,
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    model_pod, client_pod = deploy(kube, cloud_stub, models)
    sidecar = client_pod["spec"]["initContainers"][0]
    assert sidecar["name"] == "clawdbot-sidecar" and sidecar["restartPolicy"] == "Always"
    app_env = {e["name"]: e.get("value") for e in client_pod["spec"]["containers"][0]["env"]}
    assert app_env["OPENAI_BASE_URL"] == "http://127.0.0.1:8088/v1"

    with (
        model_server(local_cluster, model_pod, models, timeout=60) as model,
        sidecar_of(local_cluster, client_pod, operator) as (base, sidecar_proc),
    ):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)

        short = client.chat.completions.with_raw_response.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hello"}], max_tokens=8
        )
        assert short.headers["x-clawdbot-target"] == "local", sidecar_proc.log_tail()
        assert short.parse().model == "tiny-chat"
        assert model.pod_ip == model_pod["status"]["podIP"]

        long = client.chat.completions.with_raw_response.create(
            model="tiny-chat",
            messages=[{"role": "user", "content": f"{LONG} Reply to {EMAIL}."}],
        )
        assert long.headers["x-clawdbot-target"] == "cloud"
        assert EMAIL in (long.parse().choices[0].message.content or "")
        sent = stub_requests(cloud_stub)
        assert len(sent) == 1 and EMAIL not in json.dumps(sent)

    # The operator's own metrics: it reconciled, injected one pod, and leads (no election).
    ops = f"http://127.0.0.1:{operator.prometheus_port}"
    assert metric(ops, 'clawdbot_operator_injection_requests_total{outcome="injected"}') == 1
    assert metric(ops, 'clawdbot_operator_reconciles_total{result="ok"}') >= 1
    assert metric(ops, "clawdbot_operator_leader ") == 1

    policy = kube.wait_for("routingpolicy", "chat", lambda p: is_true(p, "Ready"), what="Ready")
    assert policy["status"]["readyEndpoints"] == 1
    assert policy["status"]["matchedPods"] == 1


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name):
                return float(line.split()[-1])
    return 0.0


def test_endpoints_follow_scaling_and_failures_and_outlive_the_operator(
    local_cluster: E2ECluster,
    kube: Kubectl,
    operator: Operator,
    cloud_stub: str,
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    first_pod, client_pod = deploy(kube, cloud_stub, models)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(model_server(local_cluster, first_pod, models))
        base, sidecar_proc = stack.enter_context(sidecar_of(local_cluster, client_pod, operator))
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        healthy = 'clawdbot_sidecar_local_endpoints{state="healthy"}'
        assert metric(base, healthy) == 1

        # Scale out: the new replica reaches the sidecar over the discovery stream.
        kube.run("scale", "md/tiny-chat", "--replicas=2")
        deadline = time.monotonic() + 60
        while len(_ready_pods(kube)) < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
        second_pod = next(p for p in _ready_pods(kube) if p["metadata"]["name"] !=
                          first_pod["metadata"]["name"])  # fmt: skip
        ready_at = time.monotonic()
        stack.enter_context(model_server(local_cluster, second_pod, models))
        while metric(base, healthy) < 2 and time.monotonic() - ready_at < 10:
            time.sleep(0.1)
        propagation = time.monotonic() - ready_at
        assert metric(base, healthy) == 2, sidecar_proc.log_tail()
        print(f"new replica routed to {propagation:.2f}s after it was Ready")
        assert propagation < 5

        # A model server dies: requests still succeed (retry on the other replica).
        first.stop()
        answers = [
            client.chat.completions.with_raw_response.create(
                model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            for _ in range(8)
        ]
        assert all(a.headers["x-clawdbot-target"] == "local" for a in answers)

        # The operator goes away: the sidecar keeps routing with its last snapshot.
        operator.proc.terminate()
        operator.proc.wait(timeout=20)
        after = client.chat.completions.with_raw_response.create(
            model="tiny-chat", messages=[{"role": "user", "content": "still there?"}],
            max_tokens=4,
        )  # fmt: skip
        assert after.headers["x-clawdbot-target"] == "local"
        long = client.chat.completions.with_raw_response.create(
            model="tiny-chat", messages=[{"role": "user", "content": f"{LONG} {EMAIL}"}]
        )
        assert long.headers["x-clawdbot-target"] == "cloud"
        assert EMAIL in (long.parse().choices[0].message.content or "")


def _ready_pods(kube: Kubectl) -> list[dict[str, Any]]:
    pods = kube.get("pods", None, "-l", "clawdbot.io/model-deployment=tiny-chat")["items"]
    return [p for p in pods if is_true(p, "Ready") and not p["metadata"].get("deletionTimestamp")]


def test_a_failing_revision_is_rolled_back_from_the_sidecars_reports(
    local_cluster: E2ECluster,
    kube: Kubectl,
    operator: Operator,
    cloud_stub: str,
    tmp_path: Path,
) -> None:
    """Revision 2's server never gets its model ready (kwok still reports the pod Ready, so
    only traffic can tell): the sidecar falls back to the cloud, so no client request fails,
    and its load reports make the operator roll back to revision 1."""
    models = tmp_path / "models"
    first_pod, client_pod = deploy(kube, cloud_stub, models)
    broken = tmp_path / "broken"
    (broken / "tiny-chat" / "1").mkdir(parents=True)
    (broken / "tiny-chat" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    patch = {"spec": {"rollout": {"autoRollback": {"minRequests": 5, "maxErrorRate": 0.2}}}}
    kube.run("patch", "md", "tiny-chat", "--type=merge", "-p", json.dumps(patch))
    with contextlib.ExitStack() as stack:
        stack.enter_context(model_server(local_cluster, first_pod, models))
        base, sidecar_proc = stack.enter_context(
            sidecar_of(local_cluster, client_pod, operator, CLAWDBOT_SIDECAR_REPORT_INTERVAL_S="1")
        )
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)

        # A new model version: revision 2, whose server can't load its model.
        kube.run("patch", "md", "tiny-chat", "--type=merge", "-p",
                 json.dumps({"spec": {"model": {"version": "2"}}}))  # fmt: skip
        second = wait_ready_pod(
            kube, "clawdbot.io/model-deployment=tiny-chat,clawdbot.io/revision=2"
        )
        stack.enter_context(model_server(local_cluster, second, broken, wait_port=8000))
        healthy = 'clawdbot_sidecar_local_endpoints{state="healthy"}'
        deadline = time.monotonic() + 30
        targets: list[str] = []
        while time.monotonic() < deadline:  # bounded: until the rollback shows in status
            md = kube.get("md", "tiny-chat")
            if is_true(md, "RolledBack"):
                break
            raw = client.chat.completions.with_raw_response.create(
                model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            targets.append(raw.headers["x-clawdbot-target"])
            time.sleep(0.2)
        md = kube.get("md", "tiny-chat")
        assert is_true(md, "RolledBack"), json.dumps(md.get("status"), indent=1)[:3000]
        assert md["status"]["currentRevision"] == 1
        # Every request was answered; those meant for revision 2 by the cloud.
        assert "cloud" in targets, (targets, metric(base, healthy), sidecar_proc.log_tail())
    events = kube.run("get", "events", "--field-selector=involvedObject.name=tiny-chat").stdout
    assert "RolledBack" in events or "Rollback" in events
