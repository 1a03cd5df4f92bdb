"""Autoscaling end to end: load reports -> the operator's external metrics API -> the
aggregation layer -> the HorizontalPodAutoscaler -> the ModelDeployment's scale subresource ->
the Deployment -> pods Running on kwok, up under load and back down when it drops.

The operator runs as a local process with its metrics API on HTTPS 127.0.0.1:<port>. The
API server reaches it the way it reaches any metrics adapter, through the APIService
``v1beta1.external.metrics.k8s.io``; on the local control plane that APIService is backed by
a Service of type ExternalName (``externalName: localhost``), which the aggregator dials
without aggregator routing (see e2e/README.md). The APIService verifies the operator's
serving certificate: the test makes one for the Service's DNS name and gives the operator
its key and the APIService its CA bundle, as cert-manager does for the chart.

The APIService is cluster-scoped: one per cluster. The test refuses to run if another one
exists (a test run beside this one, or an installed chart) and deletes only its own.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clawdbot_operator.metrics_api import self_signed
from e2e.conftest import REPO_ROOT, E2ECluster
from e2e.harness import frontproxy
from e2e.harness.apiservice import (
    METRICS_SERVICE,
    APIServiceTaken,
    external_metrics_apiservice,
)
from e2e.harness.kube import Kubectl, condition, is_true
from e2e.harness.operator import Operator, run_operator

pytestmark = pytest.mark.e2e

METRIC = "clawdbot_inflight_requests"
NAME = "chat"
# Per-replica target of the in-flight metric, and the scale-down stabilization window
# (the HPA's default of 300 s would make the test wait five minutes).
TARGET_PER_REPLICA = 4
STABILIZATION_S = 5
MIN_REPLICAS, MAX_REPLICAS = 1, 4
# HPA sync period 5 s (e2e/cluster/cluster.sh): a change of load shows within a sync or two,
# then the operator propagates spec.replicas and kwok runs the pods within a second or two.
SCALE_UP_WAIT_S = 45.0
SCALE_DOWN_WAIT_S = STABILIZATION_S + 45.0
WAIT_S = 60.0


@dataclass(frozen=True)
class ServingCert:
    cert: Path
    key: Path


@pytest.fixture
def serving_cert(namespace: str, tmp_path: Path) -> ServingCert:
    """A self-signed certificate for the metrics Service's DNS name (what the aggregator
    checks) and 127.0.0.1 (what the test posts load reports to); it is its own CA."""
    directory = tmp_path / "tls"
    directory.mkdir()
    # The first name is also the subject CN, which is limited to 64 characters.
    cert, key = self_signed(
        directory, ["localhost", f"{METRICS_SERVICE}.{namespace}.svc", "127.0.0.1"]
    )
    return ServingCert(cert, key)


@pytest.fixture
def operator(
    cluster: E2ECluster, crds: None, namespace: str, tmp_path: Path, serving_cert: ServingCert
) -> Iterator[Operator]:
    """``clawdbot-operator --namespace NS`` serving the metrics API with ``serving_cert``."""
    assert cluster.kubeconfig, "the operator needs a kubeconfig"
    tls_args = [
        "--metrics-cert-file", str(serving_cert.cert),
        "--metrics-key-file", str(serving_cert.key),
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        try:
            op = stack.enter_context(
                run_operator(
                    cluster.kubeconfig,
                    namespace,
                    tmp_path / "operator.log",
                    cwd=REPO_ROOT,
                    extra_args=tls_args,
                )
            )
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield op


@pytest.fixture
def external_metrics_api(
    local_cluster: E2ECluster, kube: Kubectl, operator: Operator, serving_cert: ServingCert
) -> Iterator[dict[str, Any]]:
    """``v1beta1.external.metrics.k8s.io`` -> ExternalName Service ``localhost`` -> the
    operator's metrics port; Available. Deleted afterwards, if it is still the one created."""
    with contextlib.ExitStack() as stack:
        try:
            api = stack.enter_context(
                external_metrics_apiservice(
                    local_cluster.kubectl, kube, operator.metrics_port,
                    serving_cert.cert.read_bytes(),
                )
            )  # fmt: skip
        except APIServiceTaken as exc:
            pytest.fail(str(exc))
        yield api


def post_load(operator: Operator, cert: ServingCert, namespace: str, inflight: float) -> None:
    """POST one load report (what the sidecars' discovery stream will send) for ``NAME``."""
    context = ssl.create_default_context(cafile=str(cert.cert))
    report = {
        "namespace": namespace,
        "modelDeployment": NAME,
        "source": "e2e-load",
        "inflightRequests": inflight,
    }
    request = urllib.request.Request(
        f"https://127.0.0.1:{operator.metrics_port}/loadreports",
        data=json.dumps(report).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as resp:
        assert json.loads(resp.read()) == {"accepted": 1}


def model_deployment() -> dict[str, Any]:
    return {
        "apiVersion": "clawdbot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"name": "tiny", "uri": "file:///models/tiny", "version": "1"},
            "runtime": "onnx",
            "precision": "int8",
            "accelerator": {"type": "cpu"},
            "replicas": 1,
            "autoscaling": {
                "minReplicas": MIN_REPLICAS,
                "maxReplicas": MAX_REPLICAS,
                "metric": "inFlightRequests",
                "targetPerReplica": TARGET_PER_REPLICA,
                "scaleDownStabilizationSeconds": STABILIZATION_S,
            },
        },
    }


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = obj.get("status") or {}
    return status


def running_pods(kube: Kubectl) -> list[dict[str, Any]]:
    """The ModelDeployment's pods that are Running and not being deleted."""
    pods = kube.get("pods", None, "-l", f"clawdbot.io/model-deployment={NAME}")["items"]
    return [
        p
        for p in pods
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, state: Callable[[], str]
) -> None:
    """Poll ``check`` every half second until it holds, or fail with ``state()``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {timeout:.0f}s:\n{state()}")
        time.sleep(0.5)


def scaled_to(kube: Kubectl, replicas: int) -> Callable[[], bool]:
    """The whole chain at ``replicas``: ModelDeployment spec and ready replicas, the
    Deployment, and exactly that many Running pods."""

    def check() -> bool:
        md = kube.get("md", NAME)
        deployment = kube.get("deployment", NAME)
        return (
            md["spec"]["replicas"] == replicas
            and _status(md).get("readyReplicas") == replicas
            and _status(md).get("replicas") == replicas
            and deployment["spec"]["replicas"] == replicas
            and (deployment.get("status") or {}).get("readyReplicas") == replicas
            and len(running_pods(kube)) == replicas
        )

    return check


def hpa_state(kube: Kubectl) -> Callable[[], str]:
    def state() -> str:
        hpa = kube.get_or_none("hpa", NAME)
        return json.dumps(hpa.get("status") if hpa else None, indent=1)[:3000]

    return state


def metric_average(hpa: dict[str, Any]) -> str | None:
    """The HPA's current value of the external metric (AverageValue: total / replicas)."""
    for m in _status(hpa).get("currentMetrics") or []:
        ext = m.get("external") or {}
        if m.get("type") == "External" and ext.get("metric", {}).get("name") == METRIC:
            value: str | None = ext.get("current", {}).get("averageValue")
            return value
    return None


def hpa_settled(replicas: int, average: str) -> Callable[[dict[str, Any]], bool]:
    """The HPA at ``replicas``, reading ``average`` per replica, able to scale and active."""

    def check(hpa: dict[str, Any]) -> bool:
        st = _status(hpa)
        return (
            st.get("currentReplicas") == replicas
            and st.get("desiredReplicas") == replicas
            and is_true(hpa, "AbleToScale")
            and is_true(hpa, "ScalingActive")
            and metric_average(hpa) == average
        )

    return check


def rescale_events(kube: Kubectl) -> list[str]:
    found: list[dict[str, Any]] = kube.get(
        "events", None, f"--field-selector=involvedObject.name={NAME},reason=SuccessfulRescale"
    )["items"]
    return [e.get("message", "") for e in found]


def test_hpa_scales_the_model_deployment_on_load_reports_through_the_aggregator(
    kube: Kubectl,
    operator: Operator,
    serving_cert: ServingCert,
    external_metrics_api: dict[str, Any],
) -> None:
    ns = kube.namespace
    assert ns
    started = time.monotonic()
    kube.apply(model_deployment())
    md = kube.wait_for(
        "md",
        NAME,
        lambda md: is_true(md, "Ready") and _status(md).get("readyReplicas") == 1,
        timeout=WAIT_S,
        what="Ready with 1 replica",
    )
    hpa = kube.wait_for("hpa", NAME, lambda _: True, timeout=WAIT_S, what="created")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "clawdbot.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": NAME,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (MIN_REPLICAS, MAX_REPLICAS)
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == STABILIZATION_S
    selector = hpa["spec"]["metrics"][0]["external"]["metric"]["selector"]["matchLabels"]
    assert selector == {"clawdbot.io/model-deployment": NAME, "clawdbot.io/namespace": ns}
    assert _status(md)["selector"]  # the scale subresource's selector, which the HPA needs

    # Light load (2 in flight, target 4 per replica): the HPA reads the metric through the
    # aggregator, is active, and stays at one replica.
    post_load(operator, serving_cert, ns, 2)
    label_selector = urllib.parse.quote(",".join(f"{k}={v}" for k, v in selector.items()))
    through_aggregator = json.loads(
        kube.run(
            "get",
            "--raw",
            f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{METRIC}"
            f"?labelSelector={label_selector}",
        ).stdout
    )
    assert [i["value"] for i in through_aggregator["items"]] == ["2"]
    hpa = kube.wait_for(
        "hpa", NAME, hpa_settled(1, "2"), timeout=WAIT_S, what="active at 1 replica reading 2"
    )
    scaling_active = condition(hpa, "ScalingActive")
    assert scaling_active is not None and scaling_active["reason"] == "ValidMetricFound"
    assert scaled_to(kube, 1)()

    # High load: 40 in flight wants 10 replicas; maxReplicas caps it at 4.
    t_up = time.monotonic()
    post_load(operator, serving_cert, ns, 40)
    wait_until(scaled_to(kube, MAX_REPLICAS), SCALE_UP_WAIT_S, "scaled up to 4", hpa_state(kube))
    scale_up_s = time.monotonic() - t_up
    hpa = kube.wait_for(
        "hpa", NAME, hpa_settled(MAX_REPLICAS, "10"), timeout=WAIT_S, what="settled at 4"
    )
    limited = condition(hpa, "ScalingLimited")
    assert limited is not None and limited["status"] == "True"
    assert limited["reason"] == "TooManyReplicas"
    pods = running_pods(kube)
    assert all(p["spec"]["nodeName"] for p in pods)
    assert any("New size: 4" in m and METRIC in m for m in rescale_events(kube))

    # Load drops to 1 in flight: after the stabilization window, back to minReplicas.
    t_down = time.monotonic()
    post_load(operator, serving_cert, ns, 1)
    wait_until(
        scaled_to(kube, MIN_REPLICAS), SCALE_DOWN_WAIT_S, "scaled down to 1", hpa_state(kube)
    )
    scale_down_s = time.monotonic() - t_down
    hpa = kube.wait_for(
        "hpa", NAME, hpa_settled(MIN_REPLICAS, "1"), timeout=WAIT_S, what="settled at 1"
    )
    assert is_true(hpa, "AbleToScale") and is_true(hpa, "ScalingActive")
    assert any("New size: 1" in m for m in rescale_events(kube))
    total_s = time.monotonic() - started
    print(
        f"autoscaling: scale-up 1->4 in {scale_up_s:.1f}s, scale-down 4->1 in "
        f"{scale_down_s:.1f}s (stabilization {STABILIZATION_S}s), test body {total_s:.1f}s"
    )


def _direct(
    operator: Operator, cert: ServingCert, path: str, user: str, client: tuple[Path, Path] | None
) -> tuple[int, Any]:
    """GET ``path`` from the operator's metrics port itself, naming ``user`` as the
    aggregator would, with the front-proxy client certificate ``client`` (or none)."""
    context = ssl.create_default_context(cafile=str(cert.cert))
    if client is not None:
        context.load_cert_chain(*client)
    request = urllib.request.Request(
        f"https://127.0.0.1:{operator.metrics_port}{path}", headers={"X-Remote-User": user}
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_the_metrics_api_answers_only_the_aggregator_for_allowed_users(
    local_cluster: E2ECluster,
    *,
    kube: Kubectl,
    operator: Operator,
    serving_cert: ServingCert,
    external_metrics_api: dict[str, Any],
    tmp_path: Path,
) -> None:
    """The API server's aggregator is the one caller: a request without its front-proxy
    client certificate is refused (401) whatever user it names, and with it the named user
    gets a namespace's metrics only when RBAC lets them (the operator's own
    SubjectAccessReview, on top of the API server's check before it proxies)."""
    ns = kube.namespace
    assert ns
    post_load(operator, serving_cert, ns, 3)
    path = f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{METRIC}"
    through = json.loads(kube.run("get", "--raw", path).stdout)
    assert [i["value"] for i in through["items"]] == ["3"]

    # Directly, claiming to be the admin: no front-proxy certificate, no answer.
    status, body = _direct(operator, serving_cert, path, "kubernetes-admin", None)
    assert (status, body.get("reason")) == (401, "Unauthorized")

    # With the front proxy's certificate, for a service account with no rights here: the
    # operator's review says no, as the API server does through the aggregator.
    client = frontproxy.client_certificate(local_cluster, tmp_path / "front-proxy")
    assert client is not None
    reader = f"system:serviceaccount:{ns}:default"
    status, body = _direct(operator, serving_cert, path, reader, client)
    assert (status, body.get("reason")) == (403, "Forbidden"), body
    denied = kube.run("get", "--raw", path, f"--as={reader}", check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr

    # A Role in this namespace lets it read the metric (a namespace's metric is a
    # collection: the API server and the operator both check list).
    kube.apply(
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "read-load"},
         "rules": [{"apiGroups": ["external.metrics.k8s.io"], "resources": [METRIC],
                    "verbs": ["get", "list"]}]}
    )  # fmt: skip
    kube.apply(
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "read-load"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "read-load"},
         "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]}
    )  # fmt: skip
    deadline = time.monotonic() + 30  # bounded: the operator keeps an answer for 10 s
    while (status := _direct(operator, serving_cert, path, reader, client)[0]) != 200:
        assert time.monotonic() < deadline, status
        time.sleep(1)
    allowed = kube.run("get", "--raw", path, f"--as={reader}")
    assert [i["value"] for i in json.loads(allowed.stdout)["items"]] == ["3"]
    # The Role is this namespace's: another namespace stays closed to it.
    elsewhere = f"/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{METRIC}"
    assert _direct(operator, serving_cert, elsewhere, reader, client)[0] == 403
