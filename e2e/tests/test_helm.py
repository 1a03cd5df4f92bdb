"""The chart, end to end: ``helm install`` into the local control plane, the operator the
chart's Deployment describes running in its pods, the ModelDeployment and routing scenarios
against it, ``helm upgrade`` rolling it, ``helm uninstall`` leaving nothing but the CRDs.

What runs is the chart's: its two operator pods (scheduled on kwok nodes) each run the
Deployment's container (``clawdbot-operator`` with the rendered args and env) as a real
process at the pod's IP, in-cluster: the projected service-account volume the API server's
admission added (a real pod-bound token, the kube-root-ca.crt ConfigMap, the namespace) seen
at /var/run/secrets/kubernetes.io/serviceaccount, and ``KUBERNETES_SERVICE_HOST/PORT``. So
the operator has exactly the chart's RBAC, its leader election, its certificate Secret.

What this plane lacks is kube-proxy: nothing serves a ClusterIP. The install therefore goes
through a Helm post-renderer that changes two things only, as e2e/README.md describes for
APIServices: the webhook and metrics Services become ``ExternalName: localhost`` (what the API
server dials without aggregator routing), and the port the webhook configuration and the
APIService name is the one a forwarder listens on. The forwarder stands in for kube-proxy: it
hands each connection, bytes untouched, to a running operator pod's container port. Names,
paths, rules, selectors, RBAC and the TLS checks are the chart's: the API server verifies each
operator replica's certificate for ``<service>.<namespace>.svc`` against the caBundle the
operator itself published into the webhook configuration and the APIService.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from clawdbot_testing.models.tinylm import build_tiny_lm
from e2e.conftest import CRDS, REPO_ROOT, E2ECluster
from e2e.harness import frontproxy
from e2e.harness.kube import Kubectl, KubectlError, is_true
from e2e.harness.podrunner import (
    RunningPod,
    absolute_mounts_unsupported,
    kubectl_getter,
    kubectl_token_requester,
    run_pod,
)
from e2e.harness.routing import API_KEY, check_local_and_cloud
from e2e.harness.waits import wait_http_ok, wait_ready_pod

pytestmark = pytest.mark.e2e

CHART = REPO_ROOT / "helm" / "clawdbot"
BIN = Path(sys.executable).parent
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
APISERVICE = "v1beta1.external.metrics.k8s.io"
WAIT_S = 60.0
# Deletions of cluster-scoped objects and the garbage collection of what they own.
GONE_WAIT_S = 60.0
# The new leader after the upgrade. kwok deletes a pod the moment its deletion starts, and a
# pod-bound token dies with its pod, so the old leader can't release the Lease on SIGTERM as it
# would in a cluster (where its pod lingers, Terminating, while it shuts down): the successor
# waits the Lease out, as after a SIGKILL (15 s lease, seen up to a jittered retry period of
# 4.4 s late, taken at the next retry; see test_leader.py).
TAKEOVER_S = 15.0 + 2 * 4.4 + 5.0


def free_port() -> int:
    """A port nobody listens on at any address (pods bind it on their own loopback IP)."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


class Forwarder:
    """kube-proxy's part for one Service: connections to 127.0.0.1:``port`` go, bytes
    untouched (TLS ends in the pod), to the Service's running pods in turn."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.backends: list[tuple[str, int]] = []
        self.served: dict[str, int] = {}  # pod IP -> connections handed to it
        self._next = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        threading.Thread(target=self._accept, name=f"fwd-{name}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            order = self.backends[self._next :] + self.backends[: self._next]
            self._next = (self._next + 1) % max(len(self.backends), 1)
        for backend in order:
            try:
                upstream = socket.create_connection(backend, timeout=2)
            except OSError:
                continue  # that pod's process is gone: the next one
            upstream.settimeout(None)
            with self._lock:
                self.served[backend[0]] = self.served.get(backend[0], 0) + 1
            pump = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            pump.start()
            _pump(client, upstream)
            pump.join(timeout=60)
            return
        client.close()

    def close(self) -> None:
        self._sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


POST_RENDERER = '''#!{python}
"""Helm post-renderer of the helm e2e test: Services the API server must reach become
ExternalName localhost at a forwarder's port (this plane has no kube-proxy)."""
import json, sys
import yaml

ports = json.loads({ports!r})  # Service name -> forwarder port
out = []
for doc in yaml.safe_load_all(sys.stdin):
    if not doc:
        continue
    kind, name = doc["kind"], doc["metadata"]["name"]
    if kind == "Service" and name in ports:
        doc["spec"] = {{"type": "ExternalName", "externalName": "localhost",
                       "ports": [{{"name": "https", "port": ports[name], "protocol": "TCP"}}]}}
    elif kind == "MutatingWebhookConfiguration":
        for hook in doc["webhooks"]:
            svc = hook["clientConfig"]["service"]
            svc["port"] = ports[svc["name"]]
    elif kind == "APIService":
        doc["spec"]["service"]["port"] = ports[doc["spec"]["service"]["name"]]
    out.append(doc)
yaml.safe_dump_all(out, sys.stdout, sort_keys=False)
'''


class Release:
    """One installed release of the chart and the processes its pods run."""

    def __init__(self, cluster: E2ECluster, namespace: str, tmp: Path) -> None:
        assert cluster.kubeconfig
        self.cluster = cluster
        self.kubeconfig = cluster.kubeconfig
        self.helm = cluster.tool("helm")
        self.name = f"e2e-helm-{secrets.token_hex(3)}"
        self.fullname = f"{self.name}-clawdbot"
        self.namespace = f"{namespace}-rel"
        self.kube = cluster.kubectl.in_namespace(self.namespace)
        self.ports = {k: free_port() for k in ("health", "prometheus", "metrics", "webhook",
                                                "discovery")}  # fmt: skip
        self.forward = {k: Forwarder(k) for k in ("webhook", "metrics", "discovery")}
        server = urllib.parse.urlsplit(yaml.safe_load(Path(self.kubeconfig).read_text())[
            "clusters"][0]["cluster"]["server"])  # fmt: skip
        assert server.hostname and server.port
        self.api_server = (server.hostname, server.port)
        self.pods: dict[str, tuple[contextlib.ExitStack, RunningPod]] = {}  # by pod name
        self.stopped_logs: dict[str, str] = {}  # pod name -> its process's whole output
        renderer = tmp / "post-render.py"
        services = {
            f"{self.fullname}-webhook": self.forward["webhook"].port,
            f"{self.fullname}-metrics": self.forward["metrics"].port,
        }
        renderer.write_text(POST_RENDERER.format(python=sys.executable, ports=json.dumps(services)))
        renderer.chmod(0o755)
        self.renderer = renderer

    # -- helm ---------------------------------------------------------------------------

    def run_helm(self, *args: str) -> str:
        cmd = [self.helm, f"--kubeconfig={self.kubeconfig}", "--namespace", self.namespace, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"helm {args[0]} failed:\n{done.stderr}"
        return done.stdout

    def values(self) -> list[str]:
        p = self.ports
        settings = {
            "operator.healthPort": p["health"],
            "operator.prometheusPort": p["prometheus"],
            "operator.resyncSeconds": 2,
            "metrics.port": p["metrics"],
            "webhook.port": p["webhook"],
            "discovery.port": p["discovery"],
            # A broken webhook must fail this test, not let pods through without a sidecar.
            "webhook.failurePolicy": "Fail",
            "webhook.timeoutSeconds": 10,
        }
        return [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]

    def install(self) -> None:
        self.run_helm("install", self.name, str(CHART), "--create-namespace",
                      "--post-renderer", str(self.renderer), *self.values())  # fmt: skip

    def upgrade(self, *settings: str) -> None:
        args = [arg for s in settings for arg in ("--set", s)]
        self.run_helm("upgrade", self.name, str(CHART), "--reuse-values",
                      "--post-renderer", str(self.renderer), *args)  # fmt: skip

    def manifest_objects(self) -> list[tuple[str, str, str]]:
        """(kind, namespace, name) of every object of the release ("" for cluster-scoped)."""
        found = []
        for doc in yaml.safe_load_all(self.run_helm("get", "manifest", self.name)):
            if doc:
                meta = doc["metadata"]
                namespaced = doc["kind"] not in CLUSTER_SCOPED
                ns = meta.get("namespace", self.namespace) if namespaced else ""
                found.append((doc["kind"], ns, meta["name"]))
        return found

    # -- the pods' processes, as a kubelet would run them -------------------------------

    def operator_pods(self) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator"
        pods = self.kube.get("pods", None, "-l", selector)["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def sync(self) -> list[str]:
        """Start the process of every running operator pod, stop those of pods that went;
        point the forwarders at the running ones. The names of the running pods."""
        current = {
            p["metadata"]["name"]: p
            for p in self.operator_pods()
            if p["status"].get("podIP") and p["status"].get("phase") == "Running"
        }
        for name in [n for n in self.pods if n not in current]:
            self._stop(name)
        for name, pod in current.items():
            if name not in self.pods:
                self.pods[name] = self._start(pod)
        for _, running in self.pods.values():
            wait_http_ok(f"http://{running.pod_ip}:{self.ports['health']}/healthz",
                         timeout=WAIT_S, log_tail=running.log_tail)  # fmt: skip
        for key, fwd in self.forward.items():
            fwd.backends = [(r.pod_ip, self.ports[key]) for _, r in self.pods.values()]
        return sorted(self.pods)

    def _start(self, pod: dict[str, Any]) -> tuple[contextlib.ExitStack, RunningPod]:
        stack = contextlib.ExitStack()
        running = stack.enter_context(run_pod(
            pod, kubectl_getter(self.cluster.kubectl),
            token=kubectl_token_requester(self.cluster.kubectl),
            entrypoint=[str(BIN / "clawdbot-operator")],  # the image's ENTRYPOINT
            kubernetes_service=self.api_server, absolute_mounts=[SA_DIR], wait_port=False,
        ))  # fmt: skip
        return stack, running

    def wait_pods(self, count: int, check: Callable[[list[dict[str, Any]]], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while True:
            pods = self.operator_pods()
            running = [p for p in pods if p["status"].get("podIP") and is_true(p, "Ready")]
            if len(pods) == count == len(running) and check(pods):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"operator pods: {[p['metadata']['name'] for p in pods]}")
            time.sleep(0.5)

    def _stop(self, name: str) -> None:
        stack, running = self.pods.pop(name)
        running.stop()
        self.stopped_logs[name] = running.log_path.read_text(errors="replace")
        stack.close()

    def logs(self) -> str:
        def tail(text: str) -> str:
            return "\n".join(text.splitlines()[-30:])

        parts = [f"--- {n} (stopped) ---\n{tail(t)}" for n, t in self.stopped_logs.items()]
        parts += [f"--- {n} ---\n{r.log_tail(30)}" for n, (_, r) in self.pods.items()]
        return "\n".join(parts)

    def stop_all(self) -> None:
        for name in list(self.pods):
            self._stop(name)

    def close(self) -> None:
        self.stop_all()
        for fwd in self.forward.values():
            fwd.close()


CLUSTER_SCOPED = {
    "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration", "APIService",
    "CustomResourceDefinition", "Namespace",
}  # fmt: skip


@pytest.fixture
def release(local_cluster: E2ECluster, namespace: str, tmp_path: Path) -> Iterator[Release]:
    """The chart installed under a fresh release name into ``<namespace>-rel``; whatever the
    test left is uninstalled and the namespace deleted afterwards."""
    unsupported = absolute_mounts_unsupported()
    if unsupported is not None:
        pytest.skip(
            "the operator pods read their service-account files at their absolute path, "
            f"which needs a private mount namespace (root or user namespaces): {unsupported}"
        )
    taken = local_cluster.kubectl.get_or_none("apiservice", APISERVICE)
    if taken is not None:
        svc = (taken.get("spec") or {}).get("service") or {}
        pytest.fail(
            f"APIService {APISERVICE} already exists (Service {svc.get('namespace')}/"
            f"{svc.get('name')}): another test run or an installed chart serves external "
            "metrics on this cluster, and the chart would collide with it. Delete it first."
        )
    rel = Release(local_cluster, namespace, tmp_path)
    try:
        yield rel
    finally:
        print(f"--- operator logs ---\n{rel.logs()}")  # shown with a failed test's output
        rel.close()
        helm = [rel.helm, f"--kubeconfig={rel.kubeconfig}", "--namespace", rel.namespace]
        listed = subprocess.run([*helm, "status", rel.name], capture_output=True, check=False)
        if listed.returncode == 0:
            subprocess.run([*helm, "uninstall", rel.name, "--wait=false"],
                           capture_output=True, timeout=120, check=False)  # fmt: skip
        local_cluster.kubectl.delete("namespace", rel.namespace)


def verify_served(ip: str, port: int, ca: bytes, server_name: str) -> None:
    """Handshake with a replica as the API server does: its certificate must chain to ``ca``
    and name ``server_name`` (ssl raises otherwise)."""
    context = ssl.create_default_context(cadata=ca.decode())
    with (
        socket.create_connection((ip, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name),
    ):
        pass


def owner_uids(obj: dict[str, Any]) -> list[str]:
    return [o["uid"] for o in obj["metadata"].get("ownerReferences") or []]


def deploy_workload(kube: Kubectl, cloud_stub: str, models: Path) -> None:
    """A ModelDeployment of the project's tiny ONNX model, the cloud key and a RoutingPolicy."""
    build_tiny_lm(models)
    kube.apply([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cloud"},
         "stringData": {"api-key": API_KEY}},
        {"apiVersion": "clawdbot.io/v1alpha1", "kind": "ModelDeployment",
         "metadata": {"name": "tiny-chat"},
         "spec": {"model": {"name": "tiny-chat", "uri": "file:///models"},
                  "runtime": "onnx", "precision": "fp16", "accelerator": {"type": "cpu"}}},
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
         }},
    ])  # fmt: skip


def client_pod(kube: Kubectl, name: str) -> dict[str, Any]:
    """A labelled pod created through the API server (the chart's webhook runs); Ready."""
    kube.apply(
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": name, "labels": {"app": "chat", "clawdbot.io/inject": "enabled"}},
         "spec": {"containers": [{"name": "app", "image": "shop/chat:1",
                                  "command": ["sleep", "infinity"]}]}}
    )  # fmt: skip
    return kube.wait_for("pod", name, lambda p: is_true(p, "Ready"), what="Ready")


def replica_metric(
    ip: str, port: int, ca: bytes, server_name: str, *, namespace: str, client: tuple[Path, Path]
) -> list[str]:
    """The ModelDeployments one replica's metrics API has load for (asked directly, not
    through the aggregator, which would pick one replica; with its client certificate)."""
    context = frontproxy.aggregator_context(client, cadata=ca.decode())
    api = "/apis/external.metrics.k8s.io/v1beta1"
    path = f"{api}/namespaces/{namespace}/clawdbot_inflight_requests"
    connection = http.client.HTTPSConnection(ip, port, timeout=5, context=context)
    # Verify the certificate for the Service name the API server checks, dialling the IP.
    connection.sock = context.wrap_socket(
        socket.create_connection((ip, port), timeout=5), server_hostname=server_name
    )
    try:
        connection.request("GET", path, headers=frontproxy.ADMIN)
        items = json.loads(connection.getresponse().read())["items"]
    finally:
        connection.close()
    return sorted(i["metricLabels"]["clawdbot.io/model-deployment"] for i in items)


def test_chart_install_serves_model_deployments_and_routing_upgrades_and_uninstalls_cleanly(
    local_cluster: E2ECluster,
    kube: Kubectl,
    release: Release,
    cloud_stub: str,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    cluster_kube = local_cluster.kubectl
    rel, fullname = release, release.fullname

    # -- install: two operator pods, each running the chart's container in-cluster -------
    rel.install()
    rel.kube.wait_for("configmap", "kube-root-ca.crt", lambda _: True, what="published")
    rel.wait_pods(2, lambda pods: True)
    first_pods = rel.sync()
    installed_s = time.monotonic() - started
    deployment = rel.kube.get("deployment", fullname)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--leader-elect" in container["args"] and "--all-namespaces" in container["args"]

    # One certificate, in the Secret the replicas share, owned by the operator's Deployment
    # (so it goes on uninstall), its CA published where the API server reads it.
    secret = rel.kube.get("secret", f"{fullname}-serving-cert")
    assert owner_uids(secret) == [deployment["metadata"]["uid"]]
    ca = base64.b64decode(secret["data"]["ca.crt"])
    ca_b64 = secret["data"]["ca.crt"]
    webhooks = cluster_kube.get("mutatingwebhookconfiguration", f"{fullname}-sidecar-injector")
    assert [w["clientConfig"]["caBundle"] for w in webhooks["webhooks"]] == [ca_b64, ca_b64]
    lease = rel.kube.wait_for("lease", fullname, lambda ls: bool(ls["spec"].get("holderIdentity")),
                              what="held")  # fmt: skip
    assert owner_uids(lease) == [deployment["metadata"]["uid"]]
    assert lease["spec"]["holderIdentity"].split("_")[0] in first_pods

    # The APIService verifies the metrics server: no insecureSkipTLSVerify, the caBundle the
    # operator wrote, Available through the aggregator.
    apiservice = cluster_kube.wait_for(
        "apiservice", APISERVICE, lambda a: is_true(a, "Available"), timeout=WAIT_S,
        what="Available (the aggregator verified the operator's certificate)",
    )  # fmt: skip
    assert apiservice["spec"]["caBundle"] == ca_b64
    assert not apiservice["spec"].get("insecureSkipTLSVerify")
    resources = json.loads(
        cluster_kube.run("get", "--raw", "/apis/external.metrics.k8s.io/v1beta1").stdout
    )
    assert "clawdbot_inflight_requests" in [r["name"] for r in resources["resources"]]
    # Every replica serves a certificate the API server accepts for both Services' names.
    for _, running in rel.pods.values():
        for svc, port in (("webhook", rel.ports["webhook"]), ("metrics", rel.ports["metrics"])):
            verify_served(running.pod_ip, port, ca, f"{fullname}-{svc}.{rel.namespace}.svc")

    # -- a ModelDeployment, reconciled by the leader under the chart's RBAC --------------
    models = tmp_path / "models"
    deploy_workload(kube, cloud_stub, models)
    md = kube.wait_for(
        "md", "tiny-chat", lambda m: is_true(m, "Available") and is_true(m, "Ready"),
        timeout=WAIT_S, what="Available and Ready",
    )  # fmt: skip
    for kind in ("deployment", "service", "poddisruptionbudget", "networkpolicy"):
        assert md["metadata"]["uid"] in owner_uids(kube.get(kind, "tiny-chat")), kind
    model_pod = wait_ready_pod(kube, "clawdbot.io/model-deployment=tiny-chat")

    # -- routing: the API server calls the chart's webhook; the sidecar gets its policy ---
    app = client_pod(kube, "chat-app")
    sidecar = app["spec"]["initContainers"][0]
    assert sidecar["name"] == "clawdbot-sidecar" and sidecar["restartPolicy"] == "Always"
    injected_env = {e["name"]: e.get("value") for e in sidecar.get("env", [])}
    assert injected_env.get("CLAWDBOT_DISCOVERY_ADDRESS", "").startswith(
        f"{fullname}-discovery.{rel.namespace}.svc:"
    ), injected_env
    assert injected_env.get("CLAWDBOT_DISCOVERY_CA") == ca.decode()  # the one CA, again
    getter = kubectl_getter(cluster_kube)
    with (
        run_pod(model_pod, getter, argv0_map={"clawdbot-runtime": str(BIN / "clawdbot-runtime")},
                image_files={"/models": models}, timeout=60) as model,
        run_pod(app, getter, container="clawdbot-sidecar",
                token=kubectl_token_requester(cluster_kube), pod_loopback=True,
                entrypoint=[str(BIN / "clawdbot-sidecar")], wait_port=False,
                extra_env={"CLAWDBOT_DISCOVERY_ADDRESS":
                           f"localhost:{rel.forward['discovery'].port}",
                           "CLAWDBOT_SIDECAR_REPORT_INTERVAL_S": "1"}) as sidecar_proc,
    ):  # fmt: skip
        base = f"http://{app['status']['podIP']}:8088"
        wait_http_ok(f"{base}/readyz", timeout=WAIT_S, log_tail=sidecar_proc.log_tail)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        check_local_and_cloud(client, cloud_stub, sidecar_proc.log_tail)
        assert model.pod_ip == model_pod["status"]["podIP"]

        # The sidecar's one stream reaches one replica; the replicas relay its load reports
        # to each other, so both metrics APIs (whichever the aggregator dials) know the load.
        metrics_name = f"{fullname}-metrics.{rel.namespace}.svc"
        client_cert = frontproxy.client_certificate(local_cluster, tmp_path / "front-proxy")
        assert client_cert is not None
        deadline = time.monotonic() + 20  # bounded: reports every second, relayed at once
        seen: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            seen = {
                name: replica_metric(running.pod_ip, rel.ports["metrics"], ca, metrics_name,
                                     namespace=kube.namespace or "", client=client_cert)
                for name, (_, running) in rel.pods.items()
            }  # fmt: skip
            if len(seen) == 2 and all(v == ["tiny-chat"] for v in seen.values()):
                break
            time.sleep(0.5)
        assert len(seen) == 2 and all(v == ["tiny-chat"] for v in seen.values()), (
            seen, rel.forward["discovery"].served, rel.logs(),
        )  # fmt: skip
    policy = kube.wait_for(
        "routingpolicy", "chat",
        lambda p: is_true(p, "Ready") and (p.get("status") or {}).get("matchedPods") == 1,
        what="Ready with the injected pod matched",
    )  # fmt: skip
    assert policy["status"]["readyEndpoints"] == 1
    scenarios_s = time.monotonic() - started

    # -- helm upgrade: a changed value rolls the Deployment; the new pods take over -------
    rel.upgrade("operator.logLevel=DEBUG")
    rel.wait_pods(
        2,
        lambda pods: all(
            "--log-level=DEBUG" in p["spec"]["containers"][0]["args"]
            and p["metadata"]["name"] not in first_pods
            for p in pods
        ),
    )
    second_pods = rel.sync()  # the old pods are gone: their processes get SIGTERM
    assert not set(second_pods) & set(first_pods)
    lease = rel.kube.wait_for(
        "lease", fullname,
        lambda ls: (ls["spec"].get("holderIdentity") or "").split("_")[0] in second_pods,
        timeout=TAKEOVER_S, what="held by a new replica",
    )  # fmt: skip
    # The certificate survived: same CA, still published (Helm left the caBundles alone).
    assert rel.kube.get("secret", f"{fullname}-serving-cert")["data"]["ca.crt"] == ca_b64
    webhooks = cluster_kube.get("mutatingwebhookconfiguration", f"{fullname}-sidecar-injector")
    assert {w["clientConfig"]["caBundle"] for w in webhooks["webhooks"]} == {ca_b64}
    assert cluster_kube.get("apiservice", APISERVICE)["spec"]["caBundle"] == ca_b64
    # The new replicas work: the webhook injects, the new leader reconciles a scale-out.
    again = client_pod(kube, "chat-app-2")
    assert again["spec"]["initContainers"][0]["name"] == "clawdbot-sidecar"
    kube.run("scale", "md/tiny-chat", "--replicas=2")
    kube.wait_for(
        "md", "tiny-chat", lambda m: (m.get("status") or {}).get("readyReplicas") == 2,
        timeout=WAIT_S, what="2 ready replicas, reconciled by the new leader",
    )  # fmt: skip
    cluster_kube.wait_for(
        "apiservice", APISERVICE, lambda a: is_true(a, "Available"), timeout=WAIT_S,
        what="Available through the new replicas",
    )  # fmt: skip
    upgraded_s = time.monotonic() - started

    # -- helm uninstall: nothing is left but the CRDs -------------------------------------
    objects = rel.manifest_objects()
    kinds = {k for k, _, _ in objects}
    assert {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration", "APIService",
            "Service", "Deployment", "ServiceAccount", "Role", "RoleBinding",
            "PodDisruptionBudget"} <= kinds, kinds  # fmt: skip
    # What the operator made for itself: owned by its Deployment, collected with it.
    objects += [("Secret", rel.namespace, f"{fullname}-serving-cert"),
                ("Lease", rel.namespace, fullname)]  # fmt: skip
    rel.run_helm("uninstall", rel.name, "--wait", "--timeout=60s")
    # The pods are deleted; a kubelet would stop their containers (the leader then releases
    # or, the Lease being gone already, gives up on it).
    deadline = time.monotonic() + WAIT_S
    while rel.operator_pods() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not rel.operator_pods()
    rel.sync()
    # Even at DEBUG, no operator log holds the cloud key it read from its Secret.
    assert rel.stopped_logs and all(
        API_KEY not in text and base64.b64encode(API_KEY.encode()).decode() not in text
        for text in rel.stopped_logs.values()
    )
    left = _wait_gone(cluster_kube, objects)
    assert not left, f"left behind after helm uninstall: {left}"
    release_leftovers = [
        f"{kind}/{item['metadata']['name']}"
        for kind in ("secrets", "leases", "configmaps", "serviceaccounts", "services", "roles",
                     "rolebindings", "deployments", "replicasets", "pods",
                     "poddisruptionbudgets")
        for item in rel.kube.get(kind)["items"]
        if item["metadata"]["name"] not in ("kube-root-ca.crt", "default")
    ]  # fmt: skip
    assert not release_leftovers, release_leftovers
    labelled = cluster_kube.get(
        "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,apiservices", None,
        "-l", f"app.kubernetes.io/instance={rel.name}",
    )["items"]  # fmt: skip
    assert not labelled, [i["metadata"]["name"] for i in labelled]
    for crd in CRDS:  # Helm never deletes CRDs (nor the ModelDeployments in them)
        assert cluster_kube.get_or_none("crd", crd) is not None
    total_s = time.monotonic() - started
    print(
        f"helm e2e: installed and serving in {installed_s:.1f}s, scenarios done at "
        f"{scenarios_s:.1f}s, upgraded at {upgraded_s:.1f}s, uninstalled clean at {total_s:.1f}s"
    )


def _wait_gone(kube: Kubectl, objects: list[tuple[str, str, str]]) -> list[str]:
    """Wait until every object is deleted (garbage collection included); those left."""
    deadline = time.monotonic() + GONE_WAIT_S
    while True:
        left = []
        for kind, ns, name in objects:
            client = kube.in_namespace(ns) if ns else kube
            try:
                if client.get_or_none(kind, name) is not None:
                    left.append(f"{kind} {ns}/{name}".replace(" /", " "))
            except KubectlError as exc:
                left.append(f"{kind} {ns}/{name}: {exc}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)


def test_every_rendered_manifest_is_accepted_by_the_api_server(
    cluster: E2ECluster, crds: None, namespace: str
) -> None:
    """charts-tests/dry-run.sh against this cluster: every manifest the chart renders, for
    each of its value sets, passes server-side dry-run with strict validation, and the
    operator's pod template is admitted under the restricted Pod Security profile."""
    env = {**os.environ, "DRY_RUN_NAMESPACE": namespace}
    if cluster.kubeconfig:
        env["KUBECONFIG"] = cluster.kubeconfig
    done = subprocess.run(
        [str(REPO_ROOT / "charts-tests" / "dry-run.sh")], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "manifests to validate" in done.stdout, done.stdout[-2000:]
