"""The workload half of `make demo-kind` (demo/kind.sh installs the chart first): the same
model, policy, app pod and requests as `make demo`, on a kind cluster where every part runs
from the project's images. Requests reach the app pod's injected sidecar through
`kubectl port-forward`, as a developer would reach it.

Env: KUBECONFIG (demo/kind.sh sets it), KUBECTL, CLAWDBOT_DEMO_IMAGE_TAG, and optionally
CLAWDBOT_DEMO_CLOUD_URL / _MODEL / _API_KEY for a real OpenAI-compatible endpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai

from demo.run import CARD, EMAIL, REPORT, STUB_KEY, ask, info, manifests, step
from e2e.harness.kube import Kubectl, is_true
from e2e.harness.waits import wait_http_ok

DEMO_NS = "demo"
TAG = os.environ.get("CLAWDBOT_DEMO_IMAGE_TAG", "dev")
SIDECAR_IMAGE = f"clawdbot/sidecar:{TAG}"
# The test image (e2e/images/testkit.Dockerfile): the cloud stand-in and a Python to run.
TESTKIT_IMAGE = f"clawdbot-e2e/testkit:{TAG}"
STUB_PORT = 9099
# Pulling nothing (the images are loaded into kind), a pod is Ready within a minute or two.
WAIT_S = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def port_forward(kube: Kubectl, target: str, remote: int) -> Iterator[str]:
    """``kubectl port-forward`` to ``target``'s ``remote`` port; yields the local base URL."""
    local = free_port()
    cmd = [kube.binary, f"--namespace={DEMO_NS}", "port-forward", target, f"{local}:{remote}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield f"http://127.0.0.1:{local}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def cloud_stub() -> list[dict[str, Any]]:
    """The cloud stand-in, from the test image: a Deployment and its Service."""
    labels = {"app": "cloud-stub"}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "cloud-stub"},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                      "name": "stub", "image": TESTKIT_IMAGE,
                      "args": ["-m", "clawdbot_testing.cloud", "--host", "0.0.0.0",
                               "--port", str(STUB_PORT), "--api-key", STUB_KEY],
                      "ports": [{"containerPort": STUB_PORT}],
                      "securityContext": {"allowPrivilegeEscalation": False,
                                          "capabilities": {"drop": ["ALL"]}},
                  }]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "cloud-stub"},
         "spec": {"selector": labels, "ports": [{"port": STUB_PORT, "targetPort": STUB_PORT}]}},
    ]  # fmt: skip


def main() -> int:
    kube = Kubectl(os.environ.get("KUBECTL", "kubectl"), kubeconfig=os.environ.get("KUBECONFIG"))
    demo = kube.in_namespace(DEMO_NS)
    step("Deploying the tiny ONNX model, the routing policy and the app in namespace demo")
    labels = {"clawdbot.io/inject": "enabled"}
    kube.apply({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": DEMO_NS, "labels": labels}})  # fmt: skip
    demo.wait_for("serviceaccount", "default", lambda _: True)
    real = os.environ.get("CLAWDBOT_DEMO_CLOUD_URL")
    if real:
        cloud = (real, os.environ.get("CLAWDBOT_DEMO_CLOUD_MODEL", "gpt-4o-mini"),
                 os.environ.get("CLAWDBOT_DEMO_CLOUD_API_KEY", ""))  # fmt: skip
    else:
        demo.apply(cloud_stub())
        cloud = (f"http://cloud-stub.{DEMO_NS}.svc:{STUB_PORT}/v1", "gpt-4o-mini", STUB_KEY)
    docs = manifests(*cloud)
    # The app: any image that runs; it only needs to exist for the sidecar to be injected.
    app = docs[3]
    app["spec"]["containers"][0].update(image=TESTKIT_IMAGE, command=["sleep", "infinity"])
    demo.apply(docs[:3])
    md = demo.wait_for("md", "tiny-chat", lambda m: is_true(m, "Ready"), timeout=WAIT_S)
    info(f"ModelDeployment tiny-chat Ready: {md['status'].get('readyReplicas')} replica(s)")
    demo.apply(app)
    pod = demo.wait_for("pod", "support-bot", lambda p: is_true(p, "Ready"), timeout=WAIT_S)
    injected = [c["name"] for c in pod["spec"].get("initContainers", [])]
    info(f"app pod support-bot Ready; injected: {injected}")
    if "clawdbot-sidecar" not in injected:
        sys.exit("demo-kind: the sidecar was not injected; see the operator's log")

    with port_forward(demo, "pod/support-bot", 8088) as base:
        wait_http_ok(f"{base}/readyz", timeout=60)
        step("The app's requests, sent with the OpenAI SDK to the sidecar (port-forwarded)")
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        ask(client, "hello, how are you?", "1. a short question")
        ask(client, f"{REPORT}\nPlease reply to {EMAIL} and charge card {CARD}.",
            "2. a long report holding an email and a card number")  # fmt: skip
        ask(client, "hello, how are you?", "3. the short question again")
    if not real:
        with port_forward(demo, "service/cloud-stub", STUB_PORT) as stub:
            wait_http_ok(f"{stub}/_stub/requests", timeout=30)
            with urllib.request.urlopen(f"{stub}/_stub/requests", timeout=10) as resp:
                sent = json.loads(resp.read())[-1]["body"]["messages"][-1]["content"]
        info(f"what the cloud received: ...{sent[-70:]!r}")

    step("What the cluster says")
    rp = demo.wait_for("routingpolicy", "support-bot", lambda p: is_true(p, "Ready"))
    info(f"RoutingPolicy support-bot: Ready, matchedPods={rp['status'].get('matchedPods')}, "
         f"readyEndpoints={rp['status'].get('readyEndpoints')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TimeoutError as exc:
        sys.exit(f"demo-kind: {exc}\nSee `kubectl -n demo get events` and the operator's log.")
