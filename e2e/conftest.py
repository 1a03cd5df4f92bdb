"""pytest fixtures for the e2e suite: a cluster per session, a namespace per test.

    .venv/bin/pytest e2e -m e2e                    local control plane (default; make e2e)
    .venv/bin/pytest e2e -m e2e --cluster=kind     a kind cluster (needs Docker; make e2e-kind)
    CLAWDBOT_E2E_ALLOW_EXISTING_CONTEXT=1 .venv/bin/pytest e2e -m e2e --cluster=existing
                                                   the current kube context (refused otherwise)

On a failure the tail of every control-plane log and the test namespace's events are
appended to the report.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e.harness.kube import Kubectl, KubectlError, is_true
from e2e.harness.operator import Operator, run_operator

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_DIR = Path(__file__).resolve().parent / "cluster"
K8S_VERSION = os.environ.get("K8S_VERSION", "v1.36.3")
KIND_CLUSTER = os.environ.get("KIND_CLUSTER", "clawdbot-e2e")
ALLOW_EXISTING_ENV = "CLAWDBOT_E2E_ALLOW_EXISTING_CONTEXT"
# Lines of each control-plane log attached to a failed test's report.
LOG_TAIL_LINES = int(os.environ.get("CLAWDBOT_E2E_LOG_LINES", "40"))
# Namespace setup waits for the namespace's default ServiceAccount (the controller-manager
# creates it within a second or two); pods can't be created before it exists.
NAMESPACE_READY_TIMEOUT_S = 30.0

_LOGS_KEY = pytest.StashKey["Path | None"]()


def default_bin_dir() -> Path:
    """Where e2e/cluster/build.sh caches binaries (same default as the script)."""
    if os.environ.get("CLAWDBOT_BIN_DIR"):
        return Path(os.environ["CLAWDBOT_BIN_DIR"])
    return REPO_ROOT / ".cache" / "bin" / K8S_VERSION


def state_dir() -> Path:
    return Path(os.environ.get("CLAWDBOT_CLUSTER_DIR") or REPO_ROOT / ".run" / "cluster")


@dataclass
class E2ECluster:
    """The cluster under test, and how to talk to it."""

    mode: str  # "local" | "kind" | "existing"
    kubectl: Kubectl
    kubeconfig: str | None
    bin_dir: Path | None
    logs_dir: Path | None  # control-plane logs (local mode only)

    @property
    def is_local(self) -> bool:
        """Processes on this machine, kwok nodes, pod IPs on loopback."""
        return self.mode == "local"

    def tool(self, name: str) -> str:
        """Path of a cached tool (helm, kwok, ...) or the one on PATH."""
        if self.bin_dir and (self.bin_dir / name).exists():
            return str(self.bin_dir / name)
        found = shutil.which(name)
        if not found:
            pytest.fail(f"{name} not found; run 'make cluster-build' or install it")
        return found


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("clawdbot-e2e", "Clawdbot end-to-end tests")
    group.addoption(
        "--cluster",
        choices=("local", "kind", "existing"),
        default=os.environ.get("CLAWDBOT_E2E_CLUSTER", "local"),
        help="local: processes from e2e/cluster (default); kind: a kind cluster (Docker); "
        f"existing: the current kube context, only with {ALLOW_EXISTING_ENV}=1",
    )
    group.addoption(
        "--keep-cluster",
        action="store_true",
        help="leave running a local cluster this session had to start (default: stop it)",
    )
    group.addoption(
        "--keep-namespaces",
        action="store_true",
        help="don't delete test namespaces (to look at what a test left behind)",
    )


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


def _local_cluster(config: pytest.Config) -> Iterator[E2ECluster]:
    script = str(CLUSTER_DIR / "cluster.sh")
    was_running = _run([script, "status"]).returncode == 0
    up = _run([script, "up"])
    if up.returncode != 0:
        pytest.exit(
            f"could not start the local control plane:\n{up.stderr}\n"
            "Build the binaries with 'make cluster-build', then retry ('make e2e').",
            returncode=3,
        )
    kubeconfig = str(state_dir() / "kubeconfig")
    bin_dir = default_bin_dir()
    yield E2ECluster(
        mode="local",
        kubectl=Kubectl(str(bin_dir / "kubectl"), kubeconfig=kubeconfig),
        kubeconfig=kubeconfig,
        bin_dir=bin_dir,
        logs_dir=state_dir() / "logs",
    )
    if not was_running and not config.getoption("--keep-cluster"):
        _run([script, "down"])


def _kind_cluster() -> Iterator[E2ECluster]:
    kind = shutil.which(os.environ.get("KIND", "kind"))
    if not kind or not shutil.which("docker"):
        pytest.exit(
            "--cluster=kind needs kind and a running Docker engine; without Docker use the "
            "local control plane (make e2e)",
            returncode=3,
        )
    kubeconfig = REPO_ROOT / ".run" / "kind" / "kubeconfig"
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    clusters = _run([kind, "get", "clusters"]).stdout.split()
    if KIND_CLUSTER not in clusters:
        created = _run(
            [kind, "create", "cluster", "--name", KIND_CLUSTER, "--wait", "180s",
             "--config", str(CLUSTER_DIR / "kind-config.yaml"),
             "--kubeconfig", str(kubeconfig)]
        )  # fmt: skip
        if created.returncode != 0:
            pytest.exit(f"kind create cluster failed:\n{created.stderr}", returncode=3)
    else:
        _run(
            [kind, "export", "kubeconfig", "--name", KIND_CLUSTER, "--kubeconfig", str(kubeconfig)]
        )
    bin_dir = default_bin_dir()
    kubectl_bin = str(bin_dir / "kubectl") if (bin_dir / "kubectl").exists() else "kubectl"
    kubectl = Kubectl(kubectl_bin, kubeconfig=str(kubeconfig))
    _kind_fake_accelerators(kubectl)
    yield E2ECluster("kind", kubectl, str(kubeconfig), bin_dir if bin_dir.exists() else None, None)


def _kind_fake_accelerators(kubectl: Kubectl) -> None:
    """Give kind's workers the labels and GPU capacity the kwok nodes have.

    Extended resources patched into a node's status stay there (the kubelet only manages
    the resources it knows), which is the documented way to advertise them by hand.
    """
    nodes = kubectl.get("nodes", None, "-l", "clawdbot.io/accelerator")["items"]
    for node in nodes:
        acc = node["metadata"]["labels"]["clawdbot.io/accelerator"]
        resource = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu"}.get(acc)
        if resource:
            key = resource.replace("/", "~1")
            patch = (
                f'[{{"op":"add","path":"/status/capacity/{key}","value":"4"}},'
                f'{{"op":"add","path":"/status/allocatable/{key}","value":"4"}}]'
            )
            kubectl.run(
                "patch", "node", node["metadata"]["name"], "--subresource=status",
                "--type=json", "-p", patch,
            )  # fmt: skip


def _existing_cluster() -> Iterator[E2ECluster]:
    if os.environ.get(ALLOW_EXISTING_ENV) != "1":
        pytest.exit(
            f"refusing to run e2e tests against the current kube context: they create and "
            f"delete namespaces and cluster-wide CRDs. Set {ALLOW_EXISTING_ENV}=1 if this "
            "context is a disposable test cluster.",
            returncode=3,
        )
    kubectl_bin = shutil.which("kubectl") or str(default_bin_dir() / "kubectl")
    kubeconfig = os.environ.get("KUBECONFIG")
    kubectl = Kubectl(kubectl_bin, kubeconfig=kubeconfig)
    context = kubectl.run("config", "current-context", check=False).stdout.strip()
    print(f"e2e: using existing kube context {context!r}")
    yield E2ECluster("existing", kubectl, kubeconfig, None, None)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[E2ECluster]:
    """The cluster under test for the whole session (see module docstring)."""
    mode = request.config.getoption("--cluster")
    if mode == "local":
        gen = _local_cluster(request.config)
    elif mode == "kind":
        gen = _kind_cluster()
    else:
        gen = _existing_cluster()
    found = next(gen)
    request.config.stash[_LOGS_KEY] = found.logs_dir
    yield found
    request.config.stash[_LOGS_KEY] = None
    next(gen, None)


CRDS = ("modeldeployments.clawdbot.io", "routingpolicies.clawdbot.io")


@pytest.fixture(scope="session")
def crds(cluster: E2ECluster) -> None:
    """crds/ installed with plain kubectl, as a user would, and served."""
    cluster.kubectl.apply(REPO_ROOT / "crds")
    for name in CRDS:
        cluster.kubectl.wait_for(
            "crd", name, lambda crd: is_true(crd, "Established"), what="Established"
        )


@pytest.fixture
def operator(cluster: E2ECluster, crds: None, namespace: str, tmp_path: Path) -> Iterator[Operator]:
    """``clawdbot-operator --namespace NS`` for the test's namespace, stopped by its pid. (Tests
    that need the routing plane or other flags define their own.)"""
    assert cluster.kubeconfig, "the operator needs a kubeconfig"
    with contextlib.ExitStack() as stack:
        try:
            op = stack.enter_context(
                run_operator(
                    cluster.kubeconfig, namespace, tmp_path / "operator.log", cwd=REPO_ROOT
                )
            )
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield op


@pytest.fixture(scope="session")
def local_cluster(cluster: E2ECluster) -> E2ECluster:
    """The cluster, for tests that need the local control plane (loopback pod IPs, kwok)."""
    if not cluster.is_local:
        pytest.skip(
            f"needs the local control plane (pod IPs on loopback); running on {cluster.mode}"
        )
    return cluster


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")
    return f"e2e-{slug[:40].rstrip('-')}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(cluster: E2ECluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (unless --keep-namespaces)."""
    name = _namespace_name(request.node.name)
    cluster.kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"clawdbot.io/e2e": "true"}},
        }
    )
    cluster.kubectl.in_namespace(name).wait_for(
        "serviceaccount",
        "default",
        lambda _: True,
        timeout=NAMESPACE_READY_TIMEOUT_S,
        what="default ServiceAccount exists",
    )
    yield name
    if not request.config.getoption("--keep-namespaces"):
        try:
            cluster.kubectl.delete("namespace", name)
        except KubectlError as exc:  # a dead cluster already failed the test; say why here
            print(f"e2e: could not delete namespace {name}: {exc}")


@pytest.fixture
def kube(cluster: E2ECluster, namespace: str) -> Kubectl:
    """kubectl bound to the test's namespace."""
    return cluster.kubectl.in_namespace(namespace)


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 200 * lines))
            data = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(unreadable: {exc})"
    return "\n".join(data.splitlines()[-lines:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, attach control-plane log tails and the test namespace's events."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed or report.when == "teardown":
        return
    logs_dir = item.config.stash.get(_LOGS_KEY, None)
    if logs_dir is not None and logs_dir.is_dir():
        for log in sorted(logs_dir.glob("*.log")):
            report.sections.append(
                (
                    f"control plane: {log.name} (last {LOG_TAIL_LINES} lines)",
                    _tail(log, LOG_TAIL_LINES),
                )
            )
    funcargs = getattr(item, "funcargs", {})
    ns, clu = funcargs.get("namespace"), funcargs.get("cluster")
    if isinstance(ns, str) and isinstance(clu, E2ECluster):
        events = clu.kubectl.in_namespace(ns).run(
            "get", "events", "--sort-by=.lastTimestamp", check=False, timeout=15
        )
        report.sections.append((f"events in namespace {ns}", events.stdout or events.stderr))
