"""Fault injection under load, end to end: real processes on the local control plane.

The repo's API server, the real operator (webhook, discovery stream, rollouts), the injected
sidecar as a real process, the real ONNX runtime at model pods' addresses, the cloud
stand-in over a real socket; the app is a set of real ``openai`` clients in closed loops.
Each scenario injects one fault while the load runs, and counts every request as answered
(and where: local, cloud, cache), failed (an HTTP error answer) or lost (no answer). The
invariant, checked in every scenario: none is lost, none fails while a healthy target could
answer it, and the sidecar's memory stays bounded. The table of all scenarios is written to
.run/faults.md (``make faults`` runs this module alone and prints it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clawdbot_sidecar.fronts.http import HEADER_TIMEOUT_S, MAX_CONNECTIONS
from e2e.conftest import REPO_ROOT, E2ECluster
from e2e.harness import routing
from e2e.harness.faults import (
    TABLE,
    ErrorServer,
    Load,
    PodProcesses,
    Tally,
    client_for,
    cloud_faults,
    fd_budget,
    group_rss_kib,
    mib,
    open_fds,
    restart_apiserver,
    rss_text,
    send,
    watched_rss,
)
from e2e.harness.kube import Kubectl, is_true
from e2e.harness.modeldeployment import NEVER_READY, POD_ANNOTATIONS, revision_phases
from e2e.harness.operator import Operator, run_operator
from e2e.harness.routing import deploy, metric, model_server, sidecar_of, stub_requests

pytestmark = pytest.mark.e2e

MODEL_PORT = 8000  # the runtime's port in a model pod
SIDECAR_PORT = 8088
HEALTHY = 'clawdbot_sidecar_local_endpoints{state="healthy"}'
IDLE_CONNECTIONS = 10_000
# The sidecar's memory may grow this much over a scenario (buffers, connection state).
RSS_GROWTH_LIMIT_KIB = 64 * 1024
WAIT_S = 60.0


@pytest.fixture(scope="module", autouse=True)
def fault_table() -> Iterator[None]:
    """Writes the table of the module's scenarios once they ran."""
    yield
    path = TABLE.write()
    if path is not None:
        print(f"\n{TABLE.markdown()}\nfault table written to {path.relative_to(REPO_ROOT)}")


# As the chart runs it without cert-manager: the self-issued serving certificate (and its
# CA, which injected sidecars verify the discovery stream with) kept in a Secret, so a
# restarted operator serves the same one. (Kept in memory, a restart issues a new CA that
# running sidecars can't verify: see docs/security.md.)
CERT_SECRET = {"CLAWDBOT_WEBHOOK_CERT_SECRET": "clawdbot-serving-cert"}


@pytest.fixture
def operator(
    local_cluster: E2ECluster, crds: None, namespace: str, tmp_path: Path
) -> Iterator[Operator]:
    with contextlib.ExitStack() as stack:
        try:
            op = stack.enter_context(
                routing.routing_operator(
                    local_cluster, namespace, tmp_path / "operator.log", env=CERT_SECRET
                )
            )
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield op


def tune_policy(kube: Kubectl, rule: str = "short") -> None:
    """The scenarios' policy: the memory cache on, a 2 s cloud timeout with one retry, and
    the local rule named ``rule`` (renaming it shows when a change reached the sidecar)."""
    patch = {
        "spec": {
            "cache": {"enabled": True},
            "cloud": {"timeoutSeconds": 2, "maxRetries": 1},
            "rules": [
                {"name": rule, "match": {"maxTokens": 512}, "target": "local"},
                {"name": "long", "match": {"maxTokens": 4096}, "target": "cloud"},
            ],
        }
    }
    kube.run("patch", "routingpolicy", "chat", "--type=merge", "-p", json.dumps(patch))


def wait_for_rule(
    base: str, rule: str, tally: Tally, log_tail: Callable[[], str], timeout: float = WAIT_S
) -> float:
    """Until the sidecar routes by the local rule named ``rule``; the seconds it took. Its
    requests count in ``tally`` like the load's."""
    started = time.monotonic()
    with client_for(base) as client:
        n = 0
        while True:
            n += 1
            headers = send(client, tally, f"which rule? {n} {time.time_ns()}", max_tokens=2)
            if headers is not None and headers.get("x-clawdbot-reason") == f"rule:{rule}":
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"the sidecar still routes by {headers!r}\n{log_tail()}")
            time.sleep(0.3)


def wait_healthy(base: str, n: int, log_tail: Callable[[], str], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while metric(base, HEALTHY) < n:
        assert time.monotonic() < deadline, log_tail()
        time.sleep(0.2)


def check_invariant(tally: Tally, log_tail: Callable[[], str] | None = None) -> None:
    """Every request settled; none lost; none failed (every scenario leaves a healthy
    target for every request: a live replica, the fallback, the cache)."""
    why = f"{tally.summary()}\n{log_tail() if log_tail else ''}"
    assert tally.settled == tally.sent, why
    assert tally.lost == 0, why
    assert tally.failed == 0, why
    assert tally.answered > 0, why


def check_rss(rss: dict[str, int], limit_kib: int = RSS_GROWTH_LIMIT_KIB) -> None:
    assert rss["peak"] - rss["before"] < limit_kib, rss_text(rss)


# --- the data plane: model pods, the cloud, hostile clients -----------------------------------


def test_data_plane_faults(
    local_cluster: E2ECluster,
    kube: Kubectl,
    operator: Operator,
    cloud_stub: str,
    tmp_path: Path,
) -> None:
    """Two model replicas behind one sidecar: one freezes (SIGSTOP: the kernel still
    accepts its connections, nothing answers), then is killed, under load; the cloud fails
    three ways; 10,000 idle connections and a slow-loris client sit on the sidecar while the
    app keeps asking."""
    models = tmp_path / "models"
    _, client_pod = deploy(kube, cloud_stub, models)
    tune_policy(kube)
    kube.run("scale", "md/tiny-chat", "--replicas=2")
    with contextlib.ExitStack() as stack:
        servers = stack.enter_context(
            PodProcesses(kube, lambda pod: model_server(local_cluster, pod, models, timeout=60))
        )
        procs = servers.wait_running(2)
        base, sidecar = stack.enter_context(sidecar_of(local_cluster, client_pod, operator))
        wait_healthy(base, 2, sidecar.log_tail)
        pgid = sidecar.process.pid

        _silent_endpoint(base, pgid, procs[1], sidecar.log_path)
        wait_healthy(base, 2, sidecar.log_tail)  # the resumed replica is probed back
        _model_pod_killed(base, pgid, procs[1])
        _cloud_faults(base, pgid, cloud_stub)
        _hostile_clients(base, pgid, client_pod["status"]["podIP"], sidecar.process.pid)
        assert sidecar.process.poll() is None, sidecar.log_tail()
        assert not servers.errors, servers.errors


def _model_pod_killed(base: str, pgid: int, victim: Any) -> None:
    with watched_rss(pgid) as rss, Load(base, clients=3, max_requests=150, long_every=7) as load:
        load.wait_sent(40)
        os.killpg(victim.process.pid, signal.SIGKILL)  # as the OOM killer would
        victim.process.wait(timeout=10)
        load.wait_sent(150, timeout=80)
    tally = load.tally
    TABLE.add(
        "model pod killed under load (SIGKILL, 1 of 2 replicas)", tally, rss_text(rss),
        "requests on the dead replica retried on the live one; it is ejected",
    )  # fmt: skip
    check_invariant(tally)
    check_rss(rss)
    # Short prompts stay local (the live replica), long ones go to the cloud: no short
    # prompt left the pod because a replica died.
    assert tally.where["local"] + tally.where["cache"] >= tally.answered * 0.8, tally.summary()


def _silent_endpoint(base: str, pgid: int, victim: Any, sidecar_log: Path) -> None:
    """The replica's runtime is frozen (SIGSTOP): its listening socket still completes every
    handshake, so connections succeed and requests are sent, but nothing answers."""
    stalls = _count(sidecar_log, "failed its liveness check")
    with watched_rss(pgid) as rss, Load(base, clients=3, max_requests=60) as load:
        load.wait_sent(10)
        os.killpg(victim.process.pid, signal.SIGSTOP)
        try:
            load.wait_sent(60, timeout=80)
        finally:
            os.killpg(victim.process.pid, signal.SIGCONT)
    tally = load.tally
    moved = _count(sidecar_log, "failed its liveness check") - stalls
    TABLE.add(
        "local endpoint accepts and never answers (runtime frozen, SIGSTOP)", tally,
        rss_text(rss),
        f"request(s) waiting on it: {moved}, moved to the live replica after a failed liveness "
        "check (their wait: max latency); it is ejected, then probed back once resumed",
    )  # fmt: skip
    assert moved >= 1, "no request waited on the frozen replica: the scenario tested nothing"
    check_invariant(tally)
    check_rss(rss)
    assert tally.where["cloud"] == 0, tally.summary()  # a live local replica answered
    assert tally.max_latency_s() < 15, tally.summary()  # not the 300 s local timeout


def _count(log: Path, text: str) -> int:
    try:
        return log.read_text(errors="replace").count(text)
    except OSError:
        return 0


CLOUD_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("cloud answers 503", {"status": 503}),
    ("cloud times out (answers after 5 s; timeout 2 s)", {"delayS": 5.0}),
    ("cloud resets connections", {"reset": True}),
]


def _cloud_faults(base: str, pgid: int, cloud: str) -> None:
    for name, fault in CLOUD_FAULTS:
        before = len(stub_requests(cloud))
        cloud_faults(cloud, count=10_000, **fault)
        try:
            with watched_rss(pgid) as rss, Load(base, clients=2, max_requests=24,
                                                only_long=True) as load:  # fmt: skip
                load.wait_sent(24, timeout=80)
        finally:
            cloud_faults(cloud, count=0)
        tally = load.tally
        tried = len(stub_requests(cloud)) - before
        TABLE.add(
            f"{name} (prompts for the cloud)", tally, rss_text(rss),
            f"{tried} cloud attempts; answered by the local fallback (cloudToLocal) or the "
            "cache; the circuit breaker opened after 5 failures (then local at once)",
        )  # fmt: skip
        check_invariant(tally)
        check_rss(rss)
        assert tried >= 1 and tally.where["cloud"] == 0, tally.summary()
        _wait_for_cloud(base)  # the breaker's cooldown, so the next fault meets a closed one


def _wait_for_cloud(base: str) -> None:
    """Until the cloud answers again (the breaker's cooldown is 10 s)."""
    with client_for(base) as client:
        deadline = time.monotonic() + 30
        while True:
            raw = client.chat.completions.with_raw_response.create(
                model="tiny-chat", max_tokens=4,
                messages=[{"role": "user", "content": f"{routing.LONG} back? {time.time()}"}],
            )  # fmt: skip
            if raw.headers["x-clawdbot-target"] == "cloud":
                return
            assert time.monotonic() < deadline, "the cloud was not used again after its faults"
            time.sleep(1)


class SlowLoris:
    """A client that opens a request and sends its head one header line a second."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.answer = b""
        self.cut_after_s = 0.0
        self._thread = threading.Thread(target=self._run, name="slow-loris", daemon=True)

    def __enter__(self) -> SlowLoris:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=HEADER_TIMEOUT_S * 3)

    def _run(self) -> None:
        started = time.monotonic()
        with socket.create_connection((self.host, self.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\n")
            sock.settimeout(1.0)
            for i in range(int(HEADER_TIMEOUT_S * 3)):  # bounded: three header timeouts
                try:
                    sock.sendall(f"X-Trickle-{i}: {i}\r\n".encode())
                    data = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                self.answer += data
                if not data:
                    break
            self.cut_after_s = time.monotonic() - started


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end closed the connection (EOF or reset waiting to be read)."""
    sock.setblocking(False)  # a socket with a timeout would wait for data first
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _hostile_clients(base: str, pgid: int, host: str, pid: int) -> None:
    """10,000 idle connections (as many as the fd limit allows), then a slow-loris client,
    while the app keeps asking over its own connections and opens a fresh one at the cap."""
    count = fd_budget(IDLE_CONNECTIONS)
    held: list[socket.socket] = []
    refused = 0
    with watched_rss(pgid) as rss, Load(base, clients=2, max_requests=2000, pause_s=0.1) as load:
        try:
            for _ in range(count):
                try:
                    held.append(socket.create_connection((host, SIDECAR_PORT), timeout=5))
                except OSError:
                    refused += 1
            time.sleep(0.5)  # the sidecar accepts the last of them
            sidecar_fds = open_fds(pid)
            rss_held = group_rss_kib(pgid)
            closed = sum(_closed_by_peer(sock) for sock in held)
            # With the sidecar at its cap: a fresh app connection, then a slow-loris client
            # (alone, it is cut by the header timeout; a newcomer at the cap would close it
            # once its head is over a second old).
            fresh = Tally()
            with client_for(base) as client:
                for i in range(5):
                    send(client, fresh, f"a new connection at the cap {i}")
            with SlowLoris(host, SIDECAR_PORT) as loris:
                pass  # its thread runs until the sidecar answers or closes
            load.wait_sent(load.tally.settled + 10, timeout=60)
        finally:
            for sock in held:
                sock.close()
        load.stop()
    tally = load.tally
    verdict = loris.answer.split(b"\r\n", 1)[0].decode() if loris.answer else "closed"
    TABLE.add(
        f"{count:,} idle connections, then a slow-loris client", tally, rss_text(rss),
        f"the sidecar kept {len(held) - closed:,} of them ({sidecar_fds:,} fds, cap "
        f"{MAX_CONNECTIONS:,} connections, RSS {mib(rss_held)} MiB), closing the "
        f"longest-idle for each newcomer ({closed:,} closed, {refused} connects failed); "
        f"the slow-loris head was cut after {loris.cut_after_s:.0f} s ({verdict}); a new app "
        f"connection at the cap: {fresh.answered}/{fresh.sent} answered",
    )  # fmt: skip
    check_invariant(tally)
    assert fresh.answered == fresh.sent, fresh.summary()
    assert len(held) - closed <= MAX_CONNECTIONS, (len(held), closed)
    assert sidecar_fds < MAX_CONNECTIONS + 256, sidecar_fds
    assert loris.answer.startswith(b"HTTP/1.1 408"), loris.answer[:200]
    assert loris.cut_after_s < HEADER_TIMEOUT_S * 2, loris.cut_after_s
    check_rss(rss, limit_kib=128 * 1024)


# --- the control plane: the operator and the API server -------------------------------------


def test_control_plane_faults(
    local_cluster: E2ECluster,
    kube: Kubectl,
    operator: Operator,
    cloud_stub: str,
    tmp_path: Path,
) -> None:
    """The operator is killed (SIGKILL) and started again, then the API server restarts,
    both under load: the sidecar keeps serving from its last snapshot, and a policy change
    made after each reaches it (the stream and the watches came back)."""
    models = tmp_path / "models"
    _, client_pod = deploy(kube, cloud_stub, models)
    tune_policy(kube)
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            PodProcesses(kube, lambda pod: model_server(local_cluster, pod, models, timeout=60))
        ).wait_running(1)
        base, sidecar = stack.enter_context(
            sidecar_of(local_cluster, client_pod, operator, CLAWDBOT_SIDECAR_REPORT_INTERVAL_S="1")
        )
        wait_healthy(base, 1, sidecar.log_tail)
        pgid = sidecar.process.pid

        with watched_rss(pgid) as rss, Load(base, clients=2, max_requests=1500,
                                            long_every=8) as load:  # fmt: skip
            load.wait_sent(20)
            operator.kill()
            outage = load.tally.settled
            load.run_for(5)  # the outage: nothing to wait for but time
            during = load.tally.settled - outage
            env = {
                "POD_NAMESPACE": f"{kube.namespace}-op",
                "CLAWDBOT_WEBHOOK_CONFIGURATION": routing.WEBHOOK_CONFIG,
                "CLAWDBOT_WEBHOOK_PORT": str(operator.webhook_port),
                "CLAWDBOT_DISCOVERY_PORT": str(operator.discovery_port),
                **CERT_SECRET,
            }
            assert local_cluster.kubeconfig
            restarted = stack.enter_context(
                run_operator(local_cluster.kubeconfig, str(kube.namespace),
                             tmp_path / "operator-2.log",
                             routing=True, env=env, cwd=REPO_ROOT)
            )  # fmt: skip
            tune_policy(kube, rule="short-2")
            took = wait_for_rule(base, "short-2", load.tally, sidecar.log_tail)
            load.wait_sent(load.tally.settled + 20)
            load.stop()
        TABLE.add(
            "operator killed (SIGKILL) and restarted", load.tally, rss_text(rss),
            f"{during} requests answered during the 5 s outage from the last snapshot; a "
            f"policy change after the restart reached the sidecar in {took:.1f} s",
        )  # fmt: skip
        check_invariant(load.tally, sidecar.log_tail)
        check_rss(rss)

        with watched_rss(pgid) as rss, Load(base, clients=2, max_requests=1500,
                                            long_every=8) as load:  # fmt: skip
            load.wait_sent(load.tally.settled + 20)
            reports_stopped = _count(sidecar.log_path, "load reports stopped")
            before = load.tally.settled
            down_s, controllers_s = restart_apiserver(local_cluster)
            during = load.tally.settled - before
            tune_policy(kube, rule="short-3")
            took = wait_for_rule(base, "short-3", load.tally, sidecar.log_tail)
            load.wait_sent(load.tally.settled + 20)
            load.stop()
        TABLE.add(
            "API server restarted (SIGTERM, same port and etcd)", load.tally, rss_text(rss),
            f"{during} requests answered meanwhile ({down_s:.1f} s until it was ready, "
            f"{controllers_s:.0f} s until the controller-manager acted again); a policy "
            f"change after it reached the sidecar in {took:.1f} s (the operator's watches "
            "resumed)",
        )  # fmt: skip
        check_invariant(load.tally, sidecar.log_tail)
        check_rss(rss)
        assert restarted.proc.poll() is None, restarted.tail()
        # The sidecar's load reports went on through it (the autoscaler and the rollback
        # check need them): no report stream failed in the operator for want of the API.
        assert "in ReportLoad" not in restarted.log.read_text(errors="replace"), restarted.tail()
        stopped = _count(sidecar.log_path, "load reports stopped") - reports_stopped
        assert stopped == 0, sidecar.log_tail()


# --- rollouts: a revision that never gets ready, one that answers 500s -----------------------


def test_revision_faults(
    local_cluster: E2ECluster,
    kube: Kubectl,
    operator: Operator,
    cloud_stub: str,
    tmp_path: Path,
) -> None:
    """Revision 2's pods never get Ready: the rollout stops at its progress deadline and
    rolls back, revision 1 answering throughout. Revision 3's server lists its model and
    answers every inference with a 500: the sidecar falls back and its load reports make
    the operator roll back (autoRollback)."""
    models = tmp_path / "models"
    _, client_pod = deploy(kube, cloud_stub, models)
    tune_policy(kube)
    rollout = {"progressDeadlineSeconds": 30,
               "autoRollback": {"minRequests": 5, "maxErrorRate": 0.2}}  # fmt: skip
    kube.run("patch", "md", "tiny-chat", "--type=merge", "-p",
             json.dumps({"spec": {"rollout": rollout}}))  # fmt: skip

    def start(pod: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
        if pod["metadata"]["labels"].get("clawdbot.io/revision") == "3":
            return ErrorServer(pod["status"]["podIP"], MODEL_PORT)
        return model_server(local_cluster, pod, models, timeout=60)

    with contextlib.ExitStack() as stack:
        stack.enter_context(PodProcesses(kube, start)).wait_running(1)
        base, sidecar = stack.enter_context(
            sidecar_of(local_cluster, client_pod, operator, CLAWDBOT_SIDECAR_REPORT_INTERVAL_S="1")
        )
        wait_healthy(base, 1, sidecar.log_tail)
        pgid = sidecar.process.pid

        with watched_rss(pgid) as rss, Load(base, clients=2, max_requests=600,
                                            pause_s=0.2) as load:  # fmt: skip
            load.wait_sent(10)
            held = json.dumps({NEVER_READY: "true"})
            patch: dict[str, Any] = {"metadata": {"annotations": {POD_ANNOTATIONS: held}},
                                     "spec": {"model": {"version": "2"}}}  # fmt: skip
            kube.run("patch", "md", "tiny-chat", "--type=merge", "-p", json.dumps(patch))
            md = kube.wait_for(
                "md", "tiny-chat", lambda m: revision_phases(m).get(2) == "RolledBack",
                timeout=30 + WAIT_S, what="revision 2 rolled back",
            )  # fmt: skip
            load.stop()
        assert md["status"]["currentRevision"] == 1
        TABLE.add(
            "a revision that never gets ready", load.tally, rss_text(rss),
            "revision 1 answered throughout; rolled back at the 30 s progress deadline",
        )  # fmt: skip
        check_invariant(load.tally, sidecar.log_tail)
        check_rss(rss)
        assert load.tally.where["cloud"] == 0, load.tally.summary()

        with watched_rss(pgid) as rss, Load(base, clients=2, max_requests=600,
                                            pause_s=0.2) as load:  # fmt: skip
            load.wait_sent(10)
            patch = {"metadata": {"annotations": {POD_ANNOTATIONS: None}},
                     "spec": {"model": {"version": "3"}}}  # fmt: skip
            kube.run("patch", "md", "tiny-chat", "--type=merge", "-p", json.dumps(patch))
            md = kube.wait_for(
                "md", "tiny-chat", lambda m: revision_phases(m).get(3) == "RolledBack",
                timeout=WAIT_S, what="revision 3 rolled back",
            )  # fmt: skip
            load.wait_sent(load.tally.settled + 10)
            load.stop()
        assert md["status"]["currentRevision"] == 1 and is_true(md, "RolledBack")
        TABLE.add(
            "a revision that answers 500s (autoRollback)", load.tally, rss_text(rss),
            "its 500s fell back to the cloud; the sidecar's load reports made the operator "
            "roll back to revision 1",
        )  # fmt: skip
        check_invariant(load.tally, sidecar.log_tail)
        check_rss(rss)
