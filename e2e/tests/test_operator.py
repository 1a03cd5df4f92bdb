"""The operator against a real API server: children, status, drift, revisions, rollback.

The operator runs as a real subprocess (``clawdbot-operator --namespace NS``), one per test,
watching only the test's namespace; kwok plays the kubelet, so pods become Running/Ready
without images (and never Ready with the ``clawdbot.io/e2e-never-ready`` annotation, which
the operator copies onto the pods from ``clawdbot.io/pod-annotations``).
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import E2ECluster
from e2e.harness import frontproxy
from e2e.harness.kube import Kubectl, condition, is_true
from e2e.harness.modeldeployment import (
    NEVER_READY,
    POD_ANNOTATIONS,
    enforce_restricted,
    events,
    md_status,
    model_deployment,
    owned_by,
    ready_at,
    revision_phases,
    transition_time,
)
from e2e.harness.operator import Operator
from e2e.harness.watch import PodWatch, revision_of, serving_at

pytestmark = pytest.mark.e2e

# Rollouts here take a second or two; a status condition follows within a resync or two.
WAIT_S = 60.0
# How late past a deadline the operator may act: two resyncs (2s each here), plus the
# Deployment controller's and the API server's reaction, with room for a loaded machine.
NOTICE_S = 10.0


@pytest.fixture
def restricted(cluster: E2ECluster, namespace: str) -> None:
    """Enforce the ``restricted`` Pod Security Standard on the test namespace."""
    enforce_restricted(cluster.kubectl, namespace)


def metrics_api(
    cluster: E2ECluster,
    operator: Operator,
    path: str,
    report: dict[str, Any] | None = None,
    scratch: Path | None = None,
) -> Any:
    """GET from (or POST a load report to) the operator's HTTPS metrics server, the GET as
    the aggregator does it (front-proxy client certificate, the admin as the user)."""
    client = frontproxy.client_certificate(cluster, scratch or Path("."))
    if report is None and client is None:
        pytest.skip("no front-proxy client certificate to call the metrics API with")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the operator's self-signed certificate
    if client is not None:
        context.load_cert_chain(*client)
    request = urllib.request.Request(
        f"https://127.0.0.1:{operator.metrics_port}{path}",
        data=json.dumps(report).encode() if report is not None else None,
        headers={"Content-Type": "application/json", **frontproxy.ADMIN},
        method="POST" if report is not None else "GET",
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as resp:
        return json.loads(resp.read())


_status = md_status


def test_model_deployment_lifecycle(kube: Kubectl, operator: Operator, restricted: None) -> None:
    kube.apply(model_deployment("llama"))
    md = kube.wait_for("md", "llama", ready_at(1, 2), timeout=WAIT_S, what="Ready at revision 1")

    # Children, each controlled by the ModelDeployment.
    for kind in ("deployment", "service", "poddisruptionbudget", "networkpolicy"):
        child = kube.get(kind, "llama")
        assert owned_by(child, md), f"{kind} is not owned by the ModelDeployment"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "clawdbot-operator"
    assert kube.get_or_none("hpa", "llama") is None  # no autoscaling asked for

    # Pods: admitted under the restricted profile, on NVIDIA nodes, Running and Ready.
    pods = kube.get("pods", None, "-l", "clawdbot.io/model-deployment=llama")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("gpu-nvidia-"), pod["spec"]["nodeName"]
        assert pod["status"]["phase"] == "Running"
        assert pod["metadata"]["labels"]["clawdbot.io/revision"] == "1"
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"

    # ...and the profile really is enforced here: a pod without those settings is refused.
    refused = kube.run("run", "unconfined", "--image=busybox", "--restart=Never", check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr

    st = _status(md)
    assert st["selector"] and st["endpoint"].startswith("http://llama.")
    for type_ in ("Available", "Progressing", "Degraded", "RolledBack"):
        cond = condition(md, type_)
        assert cond is not None and cond["observedGeneration"] == md["metadata"]["generation"]
    assert [r["phase"] for r in st["revisions"]] == ["Healthy"]

    # Drift: a Service deleted by hand comes back.
    uid = kube.get("service", "llama")["metadata"]["uid"]
    kube.delete("service", "llama")
    kube.wait_for(
        "service",
        "llama",
        lambda s: s["metadata"]["uid"] != uid,
        timeout=WAIT_S,
        what="Service recreated",
    )

    # Scale through the scale subresource; replicas are not a new revision.
    kube.run("scale", "md/llama", "--replicas=3")
    kube.wait_for("md", "llama", ready_at(1, 3), timeout=WAIT_S, what="3 replicas ready")
    assert kube.get("deployment", "llama")["spec"]["replicas"] == 3

    # A new model version is revision 2, rolled out and healthy.
    kube.run("patch", "md", "llama", "--type=merge", "-p", '{"spec":{"model":{"version":"2"}}}')
    md = kube.wait_for("md", "llama", ready_at(2, 3), timeout=WAIT_S, what="Ready at revision 2")
    assert [r["revision"] for r in _status(md)["revisions"]] == [1, 2]
    assert _status(md)["stableRevision"] == 2
    assert events(kube, "NewRevision")

    # Roll back on request: revision 1 serves again, and the request is cleared.
    kube.run("patch", "md", "llama", "--type=merge", "-p", '{"spec":{"rollbackTo":1}}')
    md = kube.wait_for(
        "md",
        "llama",
        lambda md: ready_at(1, 3)(md) and "rollbackTo" not in md["spec"],
        timeout=WAIT_S,
        what="rolled back to revision 1 on request",
    )
    phases = {r["revision"]: r["phase"] for r in _status(md)["revisions"]}
    assert phases == {1: "Healthy", 2: "RolledBack"}
    assert events(kube, "RollbackRequested")


def test_revision_that_never_becomes_ready_is_rolled_back(
    kube: Kubectl, operator: Operator, restricted: None
) -> None:
    replicas, deadline, max_unavailable = 2, 30, 0
    rollout = {"progressDeadlineSeconds": deadline, "maxUnavailable": max_unavailable}
    kube.apply(model_deployment("phi", replicas=replicas, rollout=rollout))
    kube.wait_for("md", "phi", ready_at(1, replicas), timeout=WAIT_S, what="Ready at revision 1")
    # The rollout may take maxUnavailable of the old pods out of service (the
    # PodDisruptionBudget, maxUnavailable 1, is the looser floor); nothing more, ever.
    floor = replicas - max_unavailable

    # Every change to the pods is recorded from here on, so a dip can't hide between polls.
    with PodWatch(kube, "clawdbot.io/model-deployment=phi") as watch:
        watch.wait_until(
            lambda pods: serving_at(1)(pods) == replicas, timeout=WAIT_S, what="revision 1 up"
        )
        start = watch.mark()
        # Revision 2: pods that run but never pass readiness (see e2e/cluster/kwok-stages.yaml).
        kube.apply(
            model_deployment(
                "phi",
                annotations={POD_ANNOTATIONS: json.dumps({NEVER_READY: "true"})},
                replicas=replicas,
                rollout=rollout,
                model={"name": "llama-7b", "uri": "file:///models/llama-7b", "version": "2"},
            )
        )
        md = kube.wait_for(
            "md",
            "phi",
            lambda md: _status(md).get("currentRevision") == 2 and is_true(md, "Progressing"),
            timeout=WAIT_S,
            what="revision 2 rolling out",
        )
        began = transition_time(md, "Progressing")
        md = kube.wait_for(
            "md",
            "phi",
            lambda md: is_true(md, "RolledBack") and _status(md).get("currentRevision") == 1,
            timeout=deadline + WAIT_S,
            what="rolled back to revision 1",
        )
        rolled_back_after = (transition_time(md, "RolledBack") - began).total_seconds()
        # The Deployment runs revision 1's template again, its pods ready, revision 2's gone.
        kube.wait_for(
            "deployment",
            "phi",
            lambda d: (
                d["spec"]["template"]["metadata"]["labels"]["clawdbot.io/revision"] == "1"
                and d["status"].get("readyReplicas") == replicas
                and d["status"].get("updatedReplicas") == replicas
                and d["status"].get("replicas") == replicas
            ),
            timeout=WAIT_S,
            what="revision 1 serving again",
        )
        watch.wait_until(
            lambda pods: all(revision_of(p) == "1" for p in pods.values()),
            timeout=WAIT_S,
            what="revision 2's pods deleted",
        )
        states = watch.states(since=start)

    # At its deadline (plus a resync or two to notice), not merely eventually.
    assert deadline <= rolled_back_after <= deadline + NOTICE_S, (
        f"rolled back {rolled_back_after:.0f}s after revision 2 started (deadline {deadline}s)"
    )
    assert any(
        serving_at(2)(s) == 0 and any(revision_of(p) == "2" for p in s.values()) for s in states
    ), "no revision 2 pod was ever seen: the watch missed the rollout"
    lowest = min(serving_at(1)(s) for s in states)
    assert lowest >= floor, (
        f"revision 1 dropped to {lowest} serving pods (floor {floor}) during the failed rollout"
    )

    rolled = condition(md, "RolledBack")
    assert rolled is not None and rolled["reason"] == "ProgressDeadlineExceeded"
    assert revision_phases(md) == {1: "Healthy", 2: "RolledBack"}
    assert _status(md)["phase"] == "Degraded"
    assert is_true(md, "Available")
    warning = events(kube, "RolledBack")
    assert warning and warning[0]["type"] == "Warning"
    assert "revision 1" in warning[0]["message"]


def test_autoscaled_onnx_model_gets_an_hpa_and_metrics_from_load_reports(
    cluster: E2ECluster, kube: Kubectl, operator: Operator, restricted: None, tmp_path: Path
) -> None:
    kube.apply(
        model_deployment(
            "tiny",
            runtime="onnx",
            precision="int8",
            accelerator={"type": "cpu"},
            model={"name": "tiny", "uri": "hf://clawdbot/tiny-onnx", "version": "1"},
            replicas=1,
            autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetPerReplica": 4},
        )
    )
    md = kube.wait_for("md", "tiny", ready_at(1, 1), timeout=WAIT_S, what="Ready")
    hpa = kube.get("hpa", "tiny")
    assert owned_by(hpa, md)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "clawdbot.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "tiny",
    }
    metric = hpa["spec"]["metrics"][0]["external"]
    assert metric["metric"]["name"] == "clawdbot_inflight_requests"
    assert metric["target"] == {"type": "AverageValue", "averageValue": "4"}
    pod = kube.get("pods", None, "-l", "clawdbot.io/model-deployment=tiny")["items"][0]
    assert pod["spec"]["nodeName"] == "cpu-0" or "nvidia.com/gpu" not in json.dumps(pod["spec"])
    assert pod["spec"]["initContainers"][0]["name"] == "fetch-model"
    # The remote model URI opens egress for the download, and nothing else but DNS.
    egress = kube.get("networkpolicy", "tiny")["spec"]["egress"]
    assert [p["port"] for rule in egress for p in rule["ports"]] == [53, 53, 443]

    # Load reports -> the operator's external metrics API, read here directly; the path
    # through an APIService and the HPA is test_autoscaling.py's.
    report = {
        "namespace": kube.namespace,
        "modelDeployment": "tiny",
        "source": "e2e",
        "inflightRequests": 12,
    }
    assert metrics_api(cluster, operator, "/loadreports", report) == {"accepted": 1}
    selector = f"clawdbot.io/model-deployment=tiny,clawdbot.io/namespace={kube.namespace}"
    values = metrics_api(
        cluster,
        operator,
        scratch=tmp_path,
        path=f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{kube.namespace}/"
        f"clawdbot_inflight_requests?labelSelector={urllib.parse.quote(selector)}",
    )
    assert values["kind"] == "ExternalMetricValueList"
    assert [i["value"] for i in values["items"]] == ["12"]
    assert values["items"][0]["metricLabels"] == metric["metric"]["selector"]["matchLabels"]


def test_unsupported_combination_is_reported_and_creates_nothing(
    kube: Kubectl, operator: Operator
) -> None:
    kube.apply(
        model_deployment(
            "bad",
            runtime="onnx",
            precision="int8",
            accelerator={"type": "nvidia", "count": 2},
        )
    )
    md = kube.wait_for(
        "md",
        "bad",
        lambda md: (condition(md, "Ready") or {}).get("reason") == "InvalidSpec",
        timeout=WAIT_S,
        what="Ready=False InvalidSpec",
    )
    ready = condition(md, "Ready")
    assert ready is not None and ready["status"] == "False"
    assert "spec.accelerator.count" in ready["message"]
    assert _status(md)["phase"] == "Failed"
    deadline = time.monotonic() + 10
    while not events(kube, "InvalidSpec") and time.monotonic() < deadline:
        time.sleep(0.5)
    warning = events(kube, "InvalidSpec")
    assert warning and warning[0]["type"] == "Warning"
    assert kube.get_or_none("deployment", "bad") is None
    assert kube.get_or_none("service", "bad") is None
