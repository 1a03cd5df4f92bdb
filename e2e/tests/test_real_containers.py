"""The images, run by a real kubelet: the chart installed with the images ``make images``
built, on the real node (e2e/cluster/node.sh: containerd, runc, kube-proxy, a CNI bridge).

Nothing here runs on the host: the operator runs in its pods from ``clawdbot/operator``; the
ModelDeployment's pod serves the project's tiny ONNX model from ``clawdbot/runtime-onnx``, the
model files on a PersistentVolume (the product image holds no model); the cloud stand-in
(clawdbot_testing.cloud) and the client app (the real ``openai`` client) run from the test
image ``clawdbot-e2e/testkit``. The chart's webhook, called by the API server through the
webhook Service (kube-proxy), injects ``clawdbot/sidecar`` into the labelled client pod; the
app's requests go app -> sidecar -> model pod over pod networking, and to the cloud stand-in
through its Service. The kubelet runs every probe, and the runtime enforces what the pod specs
ask: non-root users, read-only root filesystems, no privilege escalation, no capabilities,
memory limits (checked from inside each container).

Runs only where the plane has the real node (``CLAWDBOT_REAL_NODE=1``, which .ci/run sets);
elsewhere it is skipped and says why.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from clawdbot_testing.models.tinylm import build_tiny_lm
from e2e.conftest import REPO_ROOT, E2ECluster, state_dir
from e2e.harness.kube import Kubectl, is_true
from e2e.harness.routing import API_KEY, EMAIL, LONG

pytestmark = pytest.mark.e2e

CHART = REPO_ROOT / "helm" / "clawdbot"
NODE = "clawdbot-node-0"
TAG = os.environ.get("IMAGE_TAG", "dev")
TESTKIT = f"clawdbot-e2e/testkit:{TAG}"
ON_REAL_NODE: dict[str, Any] = {
    "nodeSelector": {"clawdbot.io/real-node": "true"},
    "tolerations": [{"key": "clawdbot.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
}
RESTRICTED: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Seen from inside a container: its user, whether / is writable, its effective capabilities,
# no_new_privs, and its memory limit (cgroup v1 or v2).
INSPECT = r"""
import json, os
def limit():
    for p in ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"):
        try:
            return open(p).read().strip()
        except OSError:
            pass
try:
    open("/probe-write", "w").close()
    writable = True
except OSError:
    writable = False
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
print(json.dumps({"uid": os.getuid(), "root_writable": writable,
    "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
    "memory_limit": limit()}))
"""
# The client app: the openai client pointed at the sidecar by the injected environment.
APP = r"""
import json, os, sys, time, urllib.request
import openai
client = openai.OpenAI()
out = {"base_url": os.environ.get("OPENAI_BASE_URL")}
short = client.chat.completions.with_raw_response.create(
    model="tiny-chat", messages=[{"role": "user", "content": "hello"}], max_tokens=8)
out["short_target"] = short.headers.get("x-clawdbot-target")
out["short_model"] = short.parse().model
long = client.chat.completions.with_raw_response.create(
    model="tiny-chat", messages=[{"role": "user", "content": sys.argv[1]}])
out["long_target"] = long.headers.get("x-clawdbot-target")
out["long_answer"] = long.parse().choices[0].message.content
n = int(sys.argv[2])
started = time.monotonic()
for _ in range(n):
    client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
out["load_requests"] = n
out["load_s"] = round(time.monotonic() - started, 2)
print("RESULT " + json.dumps(out), flush=True)
time.sleep(3600)
"""
LOAD_REQUESTS = 200


@dataclass
class Timing:
    scheduled_to_ready_s: float
    node: str


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def pod_timing(pod: dict[str, Any]) -> Timing:
    """Scheduled (PodScheduled) -> Ready, from the pod's own conditions."""
    conds = {c["type"]: c for c in pod["status"].get("conditions", [])}
    start = _ts(conds["PodScheduled"]["lastTransitionTime"])
    ready = _ts(conds["Ready"]["lastTransitionTime"])
    return Timing((ready - start).total_seconds(), pod["spec"].get("nodeName", ""))


@pytest.fixture(scope="module")
def real_node(cluster: E2ECluster) -> E2ECluster:
    """The cluster, when it has the real node (Ready); skips otherwise."""
    node = cluster.kubectl.get_or_none("node", NODE)
    if node is None:
        if os.environ.get("CLAWDBOT_REAL_NODE") == "1":
            pytest.fail(f"CLAWDBOT_REAL_NODE=1 but node {NODE} is not there; see the node logs")
        pytest.skip("no real node (CLAWDBOT_REAL_NODE=1 starts one: e2e/cluster/node.sh)")
    if not is_true(node, "Ready"):
        pytest.fail(f"node {NODE} is not Ready")
    return cluster


def crashed(pod: dict[str, Any]) -> str | None:
    """The name of a container of ``pod`` that keeps failing (restarted twice, or backing
    off), else None."""
    status = pod.get("status") or {}
    for cs in [*(status.get("initContainerStatuses") or []),
               *(status.get("containerStatuses") or [])]:  # fmt: skip
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if cs.get("restartCount", 0) >= 2 or waiting.get("reason") == "CrashLoopBackOff":
            return str(cs["name"])
    return None


def wait_ready(kube: Kubectl, name: str, timeout: float = 180) -> dict[str, Any]:
    """The pod once Ready; fails at once, with the container's last log, when one of its
    containers crash-loops (a broken image fails in seconds, not at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        pod = kube.get_or_none("pod", name)
        if pod is not None and is_true(pod, "Ready"):
            return pod
        bad = crashed(pod) if pod is not None else None
        if bad is not None:
            log = kube.run("logs", name, "-c", bad, "--previous", "--tail=30", check=False)
            pytest.fail(f"pod {name}: container {bad} keeps failing; its last log:\n{log.stdout}")
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    status = json.dumps((pod or {}).get("status"), indent=1)[:3000]
    pytest.fail(f"pod {name} not Ready after {timeout:.0f}s; status: {status}")


def wait_model_ready(kube: Kubectl, name: str, timeout: float = 240) -> list[dict[str, Any]]:
    """The ModelDeployment's pods once it is Ready; fails at once when a model pod's
    container crash-loops."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = kube.get("pods", None, "-l", f"clawdbot.io/model-deployment={name}")["items"]
        for pod in pods:
            if crashed(pod) is not None:
                wait_ready(kube, pod["metadata"]["name"], timeout=0)
        md = kube.get_or_none("modeldeployment", name)
        if md is not None and is_true(md, "Ready"):
            return pods  # type: ignore[no-any-return]
        time.sleep(0.5)
    md_status = json.dumps((kube.get_or_none("modeldeployment", name) or {}).get("status"))
    pytest.fail(f"ModelDeployment {name} not Ready after {timeout:.0f}s: {md_status[:3000]}")


def exec_python(kube: Kubectl, pod: str, container: str, python: str, code: str) -> Any:
    """Run ``python -c CODE`` in a running container (kubectl exec through the kubelet)."""
    done = kube.run("exec", pod, "-c", container, "--", python, "-c", code, timeout=60)
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_restricted(seen: dict[str, Any], memory_limit: int | None, what: str) -> None:
    assert seen["uid"] != 0, f"{what} runs as root: {seen}"
    assert seen["root_writable"] is False, f"{what} can write its root filesystem: {seen}"
    assert int(seen["cap_eff"], 16) == 0, f"{what} holds capabilities: {seen}"
    assert seen["no_new_privs"] == "1", f"{what} may escalate privileges: {seen}"
    if memory_limit is not None:
        assert int(seen["memory_limit"]) == memory_limit, f"{what}: memory limit {seen}"


def sidecar_rss_kib(pod: dict[str, Any]) -> int:
    """Resident memory of the sidecar container's process, read on the node."""
    statuses = pod["status"].get("initContainerStatuses") or []
    cid = next(s["containerID"] for s in statuses if s["name"] == "clawdbot-sidecar")
    cid = cid.split("://", 1)[1]
    sock = next(Path("/run").glob("clawdbot-node-*/containerd.sock"))
    out = subprocess.run(
        ["ctr", "--address", str(sock), "--namespace", "k8s.io", "tasks", "ps", cid],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    pids = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


class Release:
    """The chart installed with the images built here, its pods on the real node."""

    def __init__(self, cluster: E2ECluster, namespace: str, tmp: Path) -> None:
        assert cluster.kubeconfig
        self.helm = cluster.tool("helm")
        self.kubeconfig = cluster.kubeconfig
        self.name = f"real-{secrets.token_hex(3)}"
        self.namespace = f"{namespace}-sys"
        self.kube = cluster.kubectl.in_namespace(self.namespace)
        values = {
            "images": {
                "operator": {"repository": "clawdbot/operator", "tag": TAG, "pullPolicy": "Never"},
                "sidecar": {"repository": "clawdbot/sidecar", "tag": TAG},
                "runtimes": {"onnx": {"cpu": {"repository": "clawdbot/runtime-onnx", "tag": TAG}}},
            },
            "operator": {"replicas": 1, "resyncSeconds": 2, **ON_REAL_NODE},
            # A broken webhook must fail this test, not let pods through without a sidecar.
            "webhook": {"failurePolicy": "Fail", "timeoutSeconds": 10},
        }
        self.values_file = tmp / "values.yaml"
        self.values_file.write_text(yaml.safe_dump(values))

    def helm_run(self, *args: str) -> str:
        cmd = [self.helm, f"--kubeconfig={self.kubeconfig}", "--namespace", self.namespace, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, f"helm {args[0]} failed:\n{done.stderr}"
        return done.stdout

    def install(self) -> None:
        self.helm_run("install", self.name, str(CHART), "--create-namespace",
                      "-f", str(self.values_file), "--wait", "--timeout=180s")  # fmt: skip

    def operator_pod(self) -> dict[str, Any]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator"
        pods = self.kube.get("pods", None, "-l", selector)["items"]
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        return pods[0]  # type: ignore[no-any-return]

    def service(self, suffix: str) -> dict[str, Any]:
        services = self.kube.get("services")["items"]
        found = [s for s in services if s["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, [s["metadata"]["name"] for s in services]
        return found[0]  # type: ignore[no-any-return]


@pytest.fixture
def release(real_node: E2ECluster, namespace: str, tmp_path: Path) -> Iterator[Release]:
    rel = Release(real_node, namespace, tmp_path)
    yield rel
    helm = [rel.helm, f"--kubeconfig={rel.kubeconfig}", "--namespace", rel.namespace]
    subprocess.run([*helm, "uninstall", rel.name, "--wait=false"], capture_output=True, check=False)
    real_node.kubectl.delete("namespace", rel.namespace)


def model_volume(kube: Kubectl, namespace: str, claim: str) -> str:
    """The tiny model's repository on a hostPath PersistentVolume bound to ``claim``;
    returns the repository's path inside the claim."""
    host = state_dir() / "node" / "models" / namespace
    build_tiny_lm(host / "repo")
    for path in [host, *host.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    pv = f"{namespace}-models"
    kube.apply([
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                  "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                  "hostPath": {"path": str(host), "type": "Directory"},
                  "claimRef": {"namespace": namespace, "name": claim}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
         "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": pv,
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ])  # fmt: skip
    return "repo"


def cloud_standin(kube: Kubectl) -> str:
    """The cloud stand-in as a pod behind a Service; its base URL (the ClusterIP: no DNS)."""
    kube.apply([
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "cloud", "labels": {"app": "cloud"}},
         "spec": {**ON_REAL_NODE, "containers": [{
             "name": "cloud", "image": TESTKIT, "imagePullPolicy": "Never",
             "args": ["-m", "clawdbot_testing.cloud", "--host", "0.0.0.0", "--port", "9099",
                      "--api-key", API_KEY],
             "ports": [{"name": "http", "containerPort": 9099}],
             "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
             "securityContext": RESTRICTED,
             "resources": {"limits": {"memory": "128Mi"}}}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "cloud"},
         "spec": {"selector": {"app": "cloud"}, "ports": [{"port": 80, "targetPort": "http"}]}},
    ])  # fmt: skip
    wait_ready(kube, "cloud")
    ip = kube.get("service", "cloud")["spec"]["clusterIP"]
    return f"http://{ip}"


def test_chart_images_on_a_real_node_serve_and_route(
    real_node: E2ECluster, release: Release, kube: Kubectl, namespace: str
) -> None:
    t0 = time.monotonic()
    # -- the chart, its operator in its pod -------------------------------------------------
    release.install()
    op = release.operator_pod()
    assert op["spec"]["nodeName"] == NODE
    op_timing = pod_timing(op)
    op_name = op["metadata"]["name"]
    seen = exec_python(release.kube, op_name, "operator", "/opt/clawdbot/bin/python", INSPECT)
    assert_restricted(seen, 512 * 1024 * 1024, "the operator container")
    installed_s = time.monotonic() - t0

    # -- the model pod: the runtime image serving the tiny model from a volume ----------------
    claim = "tiny-models"
    repo = model_volume(kube, namespace, claim)
    cloud = cloud_standin(kube)
    kube.apply([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cloud"},
         "stringData": {"api-key": API_KEY}},
        {"apiVersion": "clawdbot.io/v1alpha1", "kind": "ModelDeployment",
         "metadata": {"name": "tiny-chat"},
         "spec": {"model": {"name": "tiny-chat", "uri": f"pvc://{claim}/{repo}"},
                  "runtime": "onnx", "precision": "fp16", "accelerator": {"type": "cpu"},
                  "resources": {"limits": {"memory": "1Gi"}},
                  **ON_REAL_NODE}},
        {"apiVersion": "clawdbot.io/v1alpha1", "kind": "RoutingPolicy",
         "metadata": {"name": "chat"},
         "spec": {
             "podSelector": {"matchLabels": {"app": "chat"}},
             "localModels": [{"name": "tiny-chat"}],
             "cloud": {"baseURL": f"{cloud}/v1", "model": "gpt-4o-mini", "maxRetries": 0,
                       "apiKeySecretRef": {"name": "cloud", "key": "api-key"}},
             "rules": [{"name": "short", "match": {"maxTokens": 512}, "target": "local"},
                       {"name": "long", "match": {"maxTokens": 4096}, "target": "cloud"}],
             "audit": {"enabled": False},
         }},
    ])  # fmt: skip
    model_pods = wait_model_ready(kube, "tiny-chat")
    assert model_pods, "no model pod"
    model_pod = model_pods[0]
    assert model_pod["spec"]["nodeName"] == NODE
    model_timing = pod_timing(model_pod)
    server = model_pod["spec"]["containers"][0]["name"]
    seen = exec_python(
        kube, model_pod["metadata"]["name"], server, "/opt/clawdbot/bin/python", INSPECT
    )
    assert_restricted(seen, 1024**3, "the model server container")

    # -- the client pod: injected through the chart's webhook, the openai client in it --------
    discovery = release.service("-discovery")
    host = f"{discovery['metadata']['name']}.{release.namespace}.svc"
    kube.apply(
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "chat", "labels": {"app": "chat", "clawdbot.io/inject": "enabled"}},
         "spec": {**ON_REAL_NODE,
                  # No cluster DNS on this plane: the discovery Service's name, as DNS would.
                  "hostAliases": [{"ip": discovery["spec"]["clusterIP"], "hostnames": [host]}],
                  "containers": [{
                      "name": "app", "image": TESTKIT, "imagePullPolicy": "Never",
                      "args": ["-c", APP, f"{LONG} Reply to {EMAIL}.", str(LOAD_REQUESTS)],
                      "securityContext": RESTRICTED,
                      "resources": {"limits": {"memory": "256Mi"}}}]}}
    )  # fmt: skip
    pod = wait_ready(kube, "chat")
    names = [c["name"] for c in pod["spec"].get("initContainers", [])]
    assert "clawdbot-sidecar" in names, f"not injected: {names}"
    client_timing = pod_timing(pod)
    rss_idle = sidecar_rss_kib(pod)
    seen = exec_python(kube, "chat", "clawdbot-sidecar", "/opt/clawdbot/bin/python", INSPECT)
    assert_restricted(seen, 256 * 1024 * 1024, "the sidecar container")

    result = wait_result(kube, "chat")
    assert result["base_url"] == "http://127.0.0.1:8088/v1"
    assert result["short_target"] == "local", result
    assert result["short_model"] == "tiny-chat", result
    assert result["long_target"] == "cloud", result
    assert EMAIL in (result["long_answer"] or ""), result
    sent = json.loads(exec_python(kube, "chat", "app", "python", STUB_REQUESTS.format(cloud)))
    assert len(sent) == 1 and EMAIL not in json.dumps(sent), "the e-mail reached the cloud"
    rss_load = sidecar_rss_kib(kube.get("pod", "chat"))

    print(
        f"\nreal node: chart installed in {installed_s:.1f}s; scheduled->Ready: operator "
        f"{op_timing.scheduled_to_ready_s:.1f}s, "
        f"model pod {model_timing.scheduled_to_ready_s:.1f}s, "
        f"injected client pod {client_timing.scheduled_to_ready_s:.1f}s; sidecar RSS "
        f"{rss_idle / 1024:.1f} MiB idle, {rss_load / 1024:.1f} MiB after {LOAD_REQUESTS} "
        f"requests ({result['load_s']}s); whole test {time.monotonic() - t0:.1f}s"
    )


STUB_REQUESTS = r"""
import json, urllib.request
print(json.dumps(urllib.request.urlopen("{}/_stub/requests", timeout=5).read().decode()))
"""


def wait_result(kube: Kubectl, pod: str, timeout: float = 180) -> dict[str, Any]:
    """The RESULT line the app prints once its requests are done."""
    deadline = time.monotonic() + timeout
    logs = ""
    while time.monotonic() < deadline:
        logs = kube.run("logs", pod, "-c", "app", check=False).stdout
        for line in logs.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]
        state = kube.get("pod", pod)["status"].get("containerStatuses") or []
        if any("terminated" in (s.get("state") or {}) for s in state):
            break
        time.sleep(1)
    sidecar = kube.run("logs", pod, "-c", "clawdbot-sidecar", "--tail=40", check=False).stdout
    raise AssertionError(f"the app printed no result:\n{logs[-3000:]}\nsidecar:\n{sidecar}")
