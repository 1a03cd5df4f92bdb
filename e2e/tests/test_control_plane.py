"""The control plane against untrusted peers, on a real API server with real processes.

Who may claim what: a pod that merely carries a ModelDeployment's label is not one of its
endpoints (sidecars send endpoints unredacted prompts); a sidecar's subscription lasts only
as long as its pod and its pod's labels. See docs/security.md for the whole threat model
these checks follow.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from e2e.conftest import E2ECluster
from e2e.harness.kube import Kubectl, is_true
from e2e.harness.operator import Operator
from e2e.harness.routing import deploy, metric, model_server, sidecar_of

pytestmark = pytest.mark.e2e

# Long enough for several status refreshes (each pod event refreshes at once).
SETTLE_S = 5.0


@pytest.fixture
def operator(routed_operator: Operator) -> Operator:
    return routed_operator


def test_a_pod_with_a_model_label_is_not_an_endpoint(
    kube: Kubectl, operator: Operator, cloud_stub: str, tmp_path: Path
) -> None:
    """A Ready pod labelled like tiny-chat's, but not controlled by its ReplicaSet, is not
    counted among the policy's endpoints (which the sidecars are sent)."""
    model_pod, _ = deploy(kube, cloud_stub, tmp_path / "models")
    policy = kube.wait_for(
        "routingpolicy", "chat", lambda p: (p.get("status") or {}).get("readyEndpoints") == 1,
        what="one ready endpoint",
    )  # fmt: skip
    labels = {k: v for k, v in model_pod["metadata"]["labels"].items()
              if k.startswith(("clawdbot.io/", "app.kubernetes.io/"))}  # fmt: skip
    kube.apply(
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "impostor", "labels": labels},
         "spec": {"containers": [{"name": "server", "image": "impostor:1",
                                  "ports": [{"name": "http", "containerPort": 8000}]}]}}
    )  # fmt: skip
    kube.wait_for("pod", "impostor", lambda p: is_true(p, "Ready"), what="Ready")
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:  # bounded: the status must hold, not just once
        policy = kube.get("routingpolicy", "chat")
        assert policy["status"]["readyEndpoints"] == 1, policy["status"]
        time.sleep(0.5)
    # The real ModelDeployment's second replica still counts.
    kube.run("scale", "md/tiny-chat", "--replicas=2")
    kube.wait_for(
        "routingpolicy", "chat", lambda p: (p.get("status") or {}).get("readyEndpoints") == 2,
        what="two ready endpoints",
    )  # fmt: skip


def wait_log(op: Operator, text: str, other: str = "", timeout_s: float = 20.0) -> None:
    """Wait (bounded) until the operator's log holds ``text`` (``other``: more to show)."""
    deadline = time.monotonic() + timeout_s
    while text not in op.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, (
            f"{text!r} not in the operator log:\n{op.tail()}\n{other}"
        )
        time.sleep(0.2)


def test_a_subscription_ends_when_its_pod_is_relabelled_or_deleted(
    local_cluster: E2ECluster, kube: Kubectl, operator: Operator, cloud_stub: str, tmp_path: Path
) -> None:
    """A real sidecar's stream, authorised once, does not outlive its pod's labels or the
    pod itself: the operator ends it (and says why), the sidecar subscribes again."""
    models = tmp_path / "models"
    model_pod, client_pod = deploy(kube, cloud_stub, models)
    namespace = client_pod["metadata"]["namespace"]
    with (
        model_server(local_cluster, model_pod, models),
        sidecar_of(local_cluster, client_pod, operator) as (base, sidecar),
    ):
        assert metric(base, 'clawdbot_sidecar_local_endpoints{state="healthy"}') == 1
        kube.run("label", "pod", "chat-app", "app=elsewhere", "--overwrite")
        wait_log(operator, f"discovery stream of {namespace}/chat-app ended: pod "
                           f"{namespace}/chat-app was relabelled")  # fmt: skip
        # The sidecar subscribes again, and is served what applies now: no policy.
        deadline = time.monotonic() + 20
        while "policy '', 0 local endpoints" not in sidecar.log_tail():
            assert time.monotonic() < deadline, sidecar.log_tail()
            time.sleep(0.2)
        kube.run("delete", "pod", "chat-app", "--wait=false")
        wait_log(operator, f"pod {namespace}/chat-app was deleted", sidecar.log_tail())
