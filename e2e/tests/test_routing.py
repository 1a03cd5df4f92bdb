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
import time
from pathlib import Path

import openai
import pytest

from e2e.conftest import E2ECluster
from e2e.harness.kube import Kubectl, condition, is_true
from e2e.harness.operator import Operator
from e2e.harness.routing import (
    EMAIL,
    LONG,
    check_local_and_cloud,
    deploy,
    metric,
    model_server,
    ready_model_pods,
    sidecar_of,
    stub_requests,
)
from e2e.harness.waits import wait_ready_pod

pytestmark = pytest.mark.e2e


@pytest.fixture
def operator(routed_operator: Operator) -> Operator:
    return routed_operator


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

        check_local_and_cloud(client, cloud_stub, sidecar_proc.log_tail)
        assert model.pod_ip == model_pod["status"]["podIP"]

    # The operator's own metrics: it reconciled, injected one pod, and leads (no election).
    ops = f"http://127.0.0.1:{operator.prometheus_port}"
    assert metric(ops, 'clawdbot_operator_injection_requests_total{outcome="injected"}') == 1
    assert metric(ops, 'clawdbot_operator_reconciles_total{result="ok"}') >= 1
    assert metric(ops, "clawdbot_operator_leader ") == 1

    policy = kube.wait_for("routingpolicy", "chat", lambda p: is_true(p, "Ready"), what="Ready")
    assert policy["status"]["readyEndpoints"] == 1
    assert policy["status"]["matchedPods"] == 1
    assert not is_true(policy, "Degraded")

    # No local replica left: the policy stays in force but says where requests go now.
    kube.run("scale", "md/tiny-chat", "--replicas=0")
    policy = kube.wait_for(
        "routingpolicy", "chat", lambda p: is_true(p, "Degraded"), what="Degraded"
    )
    degraded = condition(policy, "Degraded")
    assert degraded is not None and degraded["reason"] == "NoReadyEndpoints"
    assert "tiny-chat" in degraded["message"] and "cloud" in degraded["message"]
    assert is_true(policy, "Ready") and policy["status"]["readyEndpoints"] == 0


def test_embeddings_are_answered_by_the_local_embedding_model(
    local_cluster: E2ECluster,
    kube: Kubectl,
    operator: Operator,
    cloud_stub: str,
    tmp_path: Path,
) -> None:
    """The app's embeddings request goes to the policy's local embedding model (a second
    ModelDeployment), chosen by model name among the local endpoints, and never to the cloud
    (which has no ``embeddingModel``: vectors of two models are not comparable)."""
    models = tmp_path / "models"
    chat_pod, client_pod = deploy(kube, cloud_stub, models, embeddings=True)
    embed_pod = wait_ready_pod(kube, "clawdbot.io/model-deployment=tiny-embed")
    texts = [
        "the garden is green after the rain",
        "rain in the garden",
        "the train leaves at nine in the morning",
    ]
    with (
        model_server(local_cluster, chat_pod, models),
        model_server(local_cluster, embed_pod, models),
        sidecar_of(local_cluster, client_pod, operator) as (base, sidecar_proc),
    ):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 20  # bounded: until both endpoints reached the sidecar
        while metric(base, 'clawdbot_sidecar_local_endpoints{state="healthy"}') < 2:
            assert time.monotonic() < deadline, sidecar_proc.log_tail()
            time.sleep(0.2)
        raw = client.embeddings.with_raw_response.create(
            model="tiny-embed", input=texts, encoding_format="float"
        )
        assert raw.headers["x-clawdbot-target"] == "local", sidecar_proc.log_tail()
        got = raw.parse()
        vectors = [d.embedding for d in got.data]
        assert [d.index for d in got.data] == [0, 1, 2] and got.model == "tiny-embed"
        assert got.usage.prompt_tokens > 0
        norms = [sum(x * x for x in v) ** 0.5 for v in vectors]
        assert all(abs(n - 1) < 1e-4 for n in norms), norms

        def cosine(a: list[float], b: list[float]) -> float:
            return sum(x * y for x, y in zip(a, b, strict=True))

        # Texts sharing words are closer than an unrelated one: a real model answered.
        assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
        # The chat model still answers chat on the same sidecar.
        chat = client.chat.completions.with_raw_response.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert chat.headers["x-clawdbot-target"] == "local"
    assert stub_requests(cloud_stub) == []  # nothing went to the cloud


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
        while len(ready_model_pods(kube)) < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
        second_pod = next(p for p in ready_model_pods(kube) if p["metadata"]["name"] !=
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
