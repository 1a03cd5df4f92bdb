"""`make demo`: Clawdbot end to end on the local control plane, no Docker needed.

1. installs the Helm chart into the running local control plane (`make cluster-up`);
2. runs the operator as a process under the chart's ServiceAccount (pods here are simulated
   by kwok, so the chart's operator pods run nothing; the webhook is called by URL);
3. deploys the project's tiny ONNX model with a ModelDeployment and runs its pod's
   command (the real ONNX runtime) at the pod's IP;
4. creates a RoutingPolicy and a client pod labelled for injection: the API server calls
   the webhook, the sidecar is added, and runs as a process at the pod's IP, taking its
   policy, endpoints and cloud key from the operator's discovery stream;
5. sends requests with the OpenAI SDK, as the app would, and prints where each went & why.

The cloud is a loopback stand-in unless CLAWDBOT_DEMO_CLOUD_URL, CLAWDBOT_DEMO_CLOUD_MODEL
and CLAWDBOT_DEMO_CLOUD_API_KEY name a real OpenAI-compatible endpoint.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import yaml
from cryptography import x509

from clawdbot_testing.models.tinylm import build_tiny_lm
from e2e.harness.kube import Kubectl, is_true
from e2e.harness.operator import free_port, run_operator
from e2e.harness.podrunner import kubectl_getter, kubectl_token_requester, run_pod
from e2e.harness.waits import wait_http_ok, wait_ready_pod

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STATE = ROOT / ".run" / "demo"
K8S_VERSION = os.environ.get("K8S_VERSION", "v1.36.3")
TOOLS = Path(os.environ.get("CLAWDBOT_BIN_DIR", ROOT / ".cache" / "bin" / K8S_VERSION))
KUBECONFIG = ROOT / ".run" / "cluster" / "kubeconfig"
RELEASE, SYSTEM_NS, DEMO_NS = "clawdbot", "clawdbot-system", "demo"
STUB_KEY = "sk-demo-stub-key"
EMAIL, CARD = "jane.doe@example.com", "4111 1111 1111 1111"
REPORT = (
    "Quarterly report. Revenue grew in every region; costs were flat; the support backlog "
    "fell by a third after the new triage process. "
) * 25


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def info(text: str) -> None:
    print(f"    {text}", flush=True)


def helm(*args: str) -> str:
    cmd = [str(TOOLS / "helm"), f"--kubeconfig={KUBECONFIG}", *args]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"demo: helm {args[0]} failed:\n{done.stderr.strip()}")
    return done.stdout


def operator_kubeconfig(kube: Kubectl) -> Path:
    """A kubeconfig with the chart's ServiceAccount token: the operator gets the chart's
    RBAC, exactly as in a cluster."""
    admin = yaml.safe_load(KUBECONFIG.read_text())
    token = kube.in_namespace(SYSTEM_NS).run("create", "token", RELEASE, "--duration=4h")
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": RELEASE, "user": {"token": token.stdout.strip()}}],
        "contexts": [{"name": RELEASE, "context": {"cluster": cluster["name"], "user": RELEASE}}],
        "current-context": RELEASE,
    }
    path = STATE / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def cloud_endpoint() -> Iterator[tuple[str, str, str, bool]]:
    """(base URL, model, API key, is_stub)."""
    url = os.environ.get("CLAWDBOT_DEMO_CLOUD_URL")
    if url:
        yield (url, os.environ.get("CLAWDBOT_DEMO_CLOUD_MODEL", "gpt-4o-mini"),
               os.environ.get("CLAWDBOT_DEMO_CLOUD_API_KEY", ""), False)  # fmt: skip
        return
    port = free_port()
    log = (STATE / "cloud-stub.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "clawdbot-cloud-standin"), "--port", str(port), "--api-key", STUB_KEY],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/_stub/requests", timeout=60)
        yield f"http://127.0.0.1:{port}/v1", "gpt-4o-mini", STUB_KEY, True
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def manifests(cloud_url: str, cloud_model: str, cloud_key: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cloud-llm"},
         "stringData": {"api-key": cloud_key}},
        {"apiVersion": "clawdbot.io/v1alpha1", "kind": "ModelDeployment",
         "metadata": {"name": "tiny-chat"},
         "spec": {"model": {"name": "tiny-chat", "uri": "file:///models", "version": "1"},
                  "runtime": "onnx", "precision": "fp16", "accelerator": {"type": "cpu"},
                  "cpuThreads": 1}},
        {"apiVersion": "clawdbot.io/v1alpha1", "kind": "RoutingPolicy",
         "metadata": {"name": "support-bot"},
         "spec": {
             "podSelector": {"matchLabels": {"app": "support-bot"}},
             "localModels": [{"name": "tiny-chat"}],
             "cloud": {"baseURL": cloud_url, "model": cloud_model,
                       "apiKeySecretRef": {"name": "cloud-llm", "key": "api-key"}},
             "rules": [
                 {"name": "short-stays-local", "match": {"maxTokens": 512}, "target": "local"},
                 {"name": "long-goes-to-cloud", "match": {"maxTokens": 8192}, "target": "cloud"},
             ],
             "defaultTarget": "reject",
             "redaction": {"mode": "pseudonymize"},
             "cache": {"enabled": True},
             "audit": {"enabled": False},
         }},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "support-bot", "labels": {"app": "support-bot"}},
         "spec": {"containers": [{"name": "app", "image": "example/support-bot:1",
                                  "command": ["python", "-m", "support_bot"]}]}},
    ]  # fmt: skip


def ask(client: openai.OpenAI, prompt: str, label: str, **kw: Any) -> None:
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-chat", messages=[{"role": "user", "content": prompt}], max_tokens=24, **kw
    )
    answer = raw.parse().choices[0].message.content or ""
    elapsed = (time.monotonic() - started) * 1000
    target, reason = raw.headers["x-clawdbot-target"], raw.headers["x-clawdbot-reason"]
    info(f"{label}")
    info(f"  -> {target:<6} because {reason}  ({elapsed:.0f} ms)")
    shown = answer if len(answer) <= 110 else f"...{answer[-100:]}"
    info(f"  answer: {shown!r}")


def main() -> int:
    if not (TOOLS / "helm").exists() or not KUBECONFIG.exists():
        print("demo: run `make cluster-up` first (make demo does it)", file=sys.stderr)
        return 2
    started = time.monotonic()
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    kube = Kubectl(str(TOOLS / "kubectl"), kubeconfig=str(KUBECONFIG))
    demo = kube.in_namespace(DEMO_NS)
    webhook_port, discovery_port = free_port(), free_port()
    if kube.get_or_none("namespace", DEMO_NS) is not None:
        step("Removing the previous run's demo namespace")
        kube.run("delete", "namespace", DEMO_NS, "--wait=true", "--timeout=120s")

    step("Installing the Helm chart (CRDs, RBAC, webhook configuration) into clawdbot-system")
    helm("upgrade", "--install", RELEASE, str(ROOT / "helm" / "clawdbot"),
         "--namespace", SYSTEM_NS, "--create-namespace", "--wait=false",
         "--set", f"webhook.url=https://localhost:{webhook_port}/inject-sidecar",
         "--set", "metrics.apiService.enabled=false")  # fmt: skip
    info(helm("list", "-n", SYSTEM_NS).strip().splitlines()[-1])
    kube.wait_for("crd", "routingpolicies.clawdbot.io", lambda c: is_true(c, "Established"))

    step("Starting the operator under the chart's ServiceAccount")
    env = {
        "POD_NAMESPACE": SYSTEM_NS,
        "CLAWDBOT_WEBHOOK_CONFIGURATION": f"{RELEASE}-sidecar-injector",
        "CLAWDBOT_WEBHOOK_CERT_SECRET": f"{RELEASE}-serving-cert",
        "CLAWDBOT_WEBHOOK_PORT": str(webhook_port),
        "CLAWDBOT_DISCOVERY_PORT": str(discovery_port),
    }
    with contextlib.ExitStack() as stack:
        op = stack.enter_context(
            run_operator(str(operator_kubeconfig(kube)), "", STATE / "operator.log",
                         routing=True, env=env, cwd=ROOT, print_log=False)
        )  # fmt: skip
        info(f"webhook https://localhost:{op.webhook_port}, discovery localhost:"
             f"{op.discovery_port}, log {STATE.relative_to(ROOT)}/operator.log")  # fmt: skip
        cloud_url, cloud_model, cloud_key, is_stub = stack.enter_context(cloud_endpoint())
        info(f"cloud: {cloud_url} ({'loopback stand-in' if is_stub else 'real endpoint'})")

        step("Deploying the tiny ONNX model and the routing policy in namespace demo")
        labels = {"clawdbot.io/inject": "enabled"}
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": DEMO_NS, "labels": labels},
            }
        )
        kube.in_namespace(DEMO_NS).wait_for("serviceaccount", "default", lambda _: True)
        models = STATE / "models"
        build_tiny_lm(models)
        docs = manifests(cloud_url, cloud_model, cloud_key)
        demo.apply(docs[:3])
        model_pod = wait_ready_pod(demo, "clawdbot.io/model-deployment=tiny-chat", timeout=90)
        getter = kubectl_getter(kube)
        runtime = stack.enter_context(run_pod(
            model_pod, getter, argv0_map={"clawdbot-runtime": str(BIN / "clawdbot-runtime")},
            image_files={"/models": models}, timeout=90,
        ))  # fmt: skip
        info(f"model pod {model_pod['metadata']['name']} serving at {runtime.pod_ip}:8000")
        info(demo.run("get", "md").stdout.strip().replace("\n", "\n    "))

        step("Creating the app pod: the API server calls the webhook, which adds the sidecar")
        demo.apply(docs[3])
        app = demo.wait_for("pod", "support-bot", lambda p: is_true(p, "Ready"))
        init = [c["name"] for c in app["spec"].get("initContainers", [])]
        env_app = {e["name"]: e.get("value") for e in app["spec"]["containers"][0]["env"]}
        info(f"injected: {init}; app OPENAI_BASE_URL={env_app['OPENAI_BASE_URL']}")
        sidecar = stack.enter_context(run_pod(
            app, getter, container="clawdbot-sidecar", token=kubectl_token_requester(kube),
            pod_loopback=True, entrypoint=[str(BIN / "clawdbot-sidecar")], wait_port=False,
            extra_env={"CLAWDBOT_DISCOVERY_ADDRESS": f"localhost:{op.discovery_port}"},
        ))  # fmt: skip
        base = f"http://{app['status']['podIP']}:8088"
        wait_http_ok(f"{base}/readyz", timeout=60, log_tail=sidecar.log_tail)
        info(f"sidecar ready at {base}; it got its policy over the discovery stream")

        step("The app's requests, sent with the OpenAI SDK to the sidecar")
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        ask(client, "hello, how are you?", "1. a short question")
        ask(client, f"{REPORT}\nPlease reply to {EMAIL} and charge card {CARD}.",
            "2. a long report holding an email and a card number")  # fmt: skip
        if is_stub:
            with urllib.request.urlopen(cloud_url.replace("/v1", "/_stub/requests")) as resp:
                sent = json.loads(resp.read())[-1]["body"]["messages"][-1]["content"]
            info(f"  what the cloud received: ...{sent[-70:]!r}")
        ask(client, "hello, how are you?", "3. the short question again")
        stream = client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "tell me a story"}],
            max_tokens=24, stream=True,
        )  # fmt: skip
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        info(f"4. a streamed answer: {len(pieces)} chunks, {''.join(pieces)[:60]!r}")

        step("What the cluster says")
        rp = demo.get("routingpolicy", "support-bot")
        info(f"RoutingPolicy support-bot: Ready={is_true(rp, 'Ready')}, "
             f"matchedPods={rp['status'].get('matchedPods')}, "
             f"readyEndpoints={rp['status'].get('readyEndpoints')}")  # fmt: skip
        with urllib.request.urlopen(f"{base}/metrics") as resp:
            metrics = resp.read().decode()
        for line in metrics.splitlines():
            if line.startswith(
                ("clawdbot_sidecar_decisions_total", "clawdbot_sidecar_redactions_t")
            ):
                info(line)
        secret = kube.in_namespace(SYSTEM_NS).get("secret", f"{RELEASE}-serving-cert")
        cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        info(f"serving certificate (webhook, discovery) in Secret {RELEASE}-serving-cert, "
             f"valid until {cert.not_valid_after_utc:%Y-%m-%d}")  # fmt: skip

    step(f"Done in {time.monotonic() - started:.0f}s")
    info("The processes the demo started are stopped; the cluster and its objects remain:")
    info("  export KUBECONFIG=.run/cluster/kubeconfig PATH=$PWD/.cache/bin/v1.36.3:$PATH")
    info("  kubectl get md,rp -n demo; kubectl get pod support-bot -n demo -o yaml")
    info("Tear down: make demo-down (uninstalls the chart) or make cluster-down (everything).")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TimeoutError as exc:
        sys.exit(f"demo: {exc}\nSee .run/demo/operator.log and `kubectl -n demo get events`.")
