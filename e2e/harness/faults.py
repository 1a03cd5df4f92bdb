"""Fault-injection scenarios' parts: a bounded load of real ``openai`` clients that counts
what became of every request, the memory of processes, servers that misbehave at a pod's
address, and the table the suite prints (e2e/tests/test_faults.py).

A request is *answered* (a 2xx, with the target that answered it: ``local``, ``cloud`` or
``cache``, from ``x-clawdbot-target``), *failed* (an HTTP error answer: a clear error the app
can act on) or *lost* (no answer within the client's timeout, or the connection dropped
without one). Every request sent is exactly one of the three.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import resource
import secrets
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from e2e.conftest import CLUSTER_DIR, REPO_ROOT, E2ECluster
from e2e.harness.kube import Kubectl
from e2e.harness.routing import LONG, ready_model_pods

# A request with no answer within this is lost (the sidecar's own limits are shorter for
# every fault the suite injects, so an answer or an error comes well before).
CLIENT_TIMEOUT_S = 30.0
# Every load loop stops by then, whatever happens.
LOAD_DEADLINE_S = 90.0
# One prompt in this many repeats the load's first, so the cache has something to answer;
# the others are distinct (and distinct from other loads'), so a target must answer them.
REPEAT_EVERY = 10

TABLE_ENV = "CLAWDBOT_FAULTS_TABLE"
DEFAULT_TABLE = REPO_ROOT / ".run" / "faults.md"


@dataclass
class Tally:
    """What became of the requests of one scenario."""

    sent: int = 0
    answered: int = 0
    failed: int = 0
    lost: int = 0
    where: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def answer(self, target: str, elapsed: float) -> None:
        with self._lock:
            self.answered += 1
            self.where[target] += 1
            self.latencies_s.append(elapsed)

    def fail(self, what: str) -> None:
        with self._lock:
            self.failed += 1
            self.errors[what] += 1

    def lose(self, what: str) -> None:
        with self._lock:
            self.lost += 1
            self.errors[what] += 1

    def count_sent(self) -> None:
        with self._lock:
            self.sent += 1

    @property
    def settled(self) -> int:
        return self.answered + self.failed + self.lost

    def max_latency_s(self) -> float:
        return max(self.latencies_s, default=0.0)

    def summary(self) -> str:
        return (
            f"sent {self.sent}, answered {self.answered} {dict(self.where)}, failed "
            f"{self.failed}, lost {self.lost}, errors {dict(self.errors)}"
        )


def send(
    client: openai.OpenAI, tally: Tally, content: str, max_tokens: int = 4
) -> dict[str, str] | None:
    """One chat completion through the sidecar, its fate counted in ``tally``; the answer's
    headers, None when it failed or was lost."""
    tally.count_sent()
    started = time.monotonic()
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="tiny-chat", messages=[{"role": "user", "content": content}],
            max_tokens=max_tokens,
        )  # fmt: skip
        raw.parse()
    except openai.APIStatusError as exc:
        tally.fail(f"{exc.status_code}")
    except openai.APITimeoutError:
        tally.lose("client timeout")
    except openai.APIConnectionError as exc:
        tally.lose(f"connection: {type(exc.__cause__).__name__}")
    else:
        tally.answer(raw.headers.get("x-clawdbot-target", "?"), time.monotonic() - started)
        return dict(raw.headers)
    return None


def client_for(base_url: str) -> openai.OpenAI:
    """The app's client: no retries of its own, so every failure shows."""
    return openai.OpenAI(
        base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT_S
    )


class Load:
    """``clients`` closed-loop app clients (threads, each its own ``openai`` client) sending
    chat completions until stopped, ``max_requests`` sent in all, or LOAD_DEADLINE_S.

    Prompts are short (the policy's local rule) unless ``long_every`` makes every n-th one
    long (its cloud rule); one in REPEAT_EVERY repeats the first one (the cache's).
    """

    def __init__(
        self,
        base_url: str,
        *,
        clients: int = 3,
        max_requests: int = 400,
        long_every: int = 0,
        only_long: bool = False,
        pause_s: float = 0.05,
    ) -> None:
        self.base_url = base_url
        self.tally = Tally()
        self.max_requests = max_requests
        self.long_every = long_every
        self.only_long = only_long
        self.pause_s = pause_s
        self._clients = clients
        self._stop = threading.Event()
        self._deadline = time.monotonic() + LOAD_DEADLINE_S
        self._issued = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._id = secrets.token_hex(4)

    def __enter__(self) -> Load:
        for k in range(self._clients):
            t = threading.Thread(target=self._run, args=(k,), name=f"load-{k}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Tally:
        """Stop sending and wait for the requests in flight; the tally."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=CLIENT_TIMEOUT_S + 10)
        return self.tally

    def _next(self) -> int | None:
        with self._lock:
            if self._issued >= self.max_requests:
                return None
            self._issued += 1
            return self._issued

    def _prompt(self, n: int) -> str:
        seq = n if n % REPEAT_EVERY else 1
        text = f"Tell me about item {seq} of {self._id}."
        if self.only_long or (self.long_every and n % self.long_every == 0):
            return f"{LONG} {text}"
        return text

    def _run(self, k: int) -> None:
        client = client_for(self.base_url)
        with client:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                n = self._next()
                if n is None:
                    return
                send(client, self.tally, self._prompt(n))
                if self.pause_s:
                    self._stop.wait(self.pause_s)

    def wait_sent(self, n: int, timeout: float = 60) -> None:
        """Until ``n`` requests (at most the load's bound) are settled (answered, failed or
        lost)."""
        n = min(n, self.max_requests)
        deadline = time.monotonic() + timeout
        while self.tally.settled < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.tally.summary()} within {timeout:.0f}s")
            time.sleep(0.05)

    def run_for(self, seconds: float) -> None:
        """Let the load run this long (or until its request bound)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and any(t.is_alive() for t in self._threads):
            time.sleep(0.05)


# --- memory ---------------------------------------------------------------------------------


def group_rss_kib(pgid: int) -> int:
    """Resident memory of every process in the process group ``pgid`` (a pod's process and
    its children; the pod runner starts each in its own session), in KiB."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


def open_fds(pid: int) -> int:
    """File descriptors the process holds (its sockets among them)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def fd_budget(wanted: int, reserve: int = 512) -> int:
    """How many sockets this process may open: ``wanted``, or fewer when even the hard
    limit on open files leaves less (the soft limit is raised towards it, never past it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + reserve
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return max(0, min(wanted, soft - reserve))


# --- a server that misbehaves at a pod's address ---------------------------------------------


class _ErrorHandler(http.server.BaseHTTPRequestHandler):
    model = "tiny-chat"
    protocol_version = "HTTP/1.1"

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # the model list (what the sidecar's probes read): "serving"
        if self.path.endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
        else:
            self._json(200, {"status": "ok"})

    def do_POST(self) -> None:  # every inference: an internal error
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._json(
            500,
            {"error": {"message": "inference failed (injected)", "type": "server_error",
                       "param": None, "code": None}},
        )  # fmt: skip

    def log_message(self, format: str, *args: Any) -> None:
        return


class ErrorServer:
    """An OpenAI-compatible server at ``host:port`` that lists its model as served and
    answers every inference with a 500: a revision whose model loads but fails each call."""

    def __init__(self, host: str, port: int) -> None:
        self.server = http.server.ThreadingHTTPServer((host, port), _ErrorHandler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ErrorServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


PodProcess = Callable[[dict[str, Any]], contextlib.AbstractContextManager[Any]]


class PodProcesses:
    """Runs ``start(pod)`` for every Ready model pod, as a kubelet starts a container, and
    ends it when the pod goes away; in a background thread, until closed."""

    def __init__(self, kube: Kubectl, start: PodProcess) -> None:
        self.kube, self.start = kube, start
        self.running: dict[str, tuple[contextlib.ExitStack, Any]] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pod-processes", daemon=True)

    def __enter__(self) -> PodProcesses:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)
        with self._lock:
            for stack, _ in self.running.values():
                stack.close()
            self.running.clear()

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            try:
                pods = {p["metadata"]["name"]: p for p in ready_model_pods(self.kube)}
            except Exception as exc:  # a transient API error (the API server restarting)
                self.errors.append(f"listing pods: {exc}")
                continue
            with self._lock:
                for name in [n for n in self.running if n not in pods]:
                    stack, _ = self.running.pop(name)
                    stack.close()
                for name, pod in pods.items():
                    if name in self.running or self._stop.is_set():
                        continue
                    stack = contextlib.ExitStack()
                    try:
                        proc = stack.enter_context(self.start(pod))
                    except Exception as exc:
                        stack.close()
                        self.errors.append(f"{name}: {exc}")
                        continue
                    self.running[name] = (stack, proc)

    def wait_running(self, n: int, timeout: float = 60) -> list[Any]:
        """Until ``n`` pods' processes run; those processes."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                procs = [proc for _, proc in self.running.values()]
            if len(procs) >= n:
                return procs
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(procs)} of {n} pod processes ({self.errors[-3:]})")
            time.sleep(0.2)


# --- the control plane ---------------------------------------------------------------------


# After an API server restart, the controllers' watches that failed meanwhile (some get
# "forbidden" while its RBAC caches fill) come back with a backoff of up to ~30 s.
CONTROLLERS_BACK_S = 120.0


def restart_apiserver(cluster: E2ECluster) -> tuple[float, float]:
    """Stop the local plane's kube-apiserver (SIGTERM) and start it again on the same port
    and etcd; the seconds until it was ready again, and until the controller-manager acted
    again (a new namespace got its default ServiceAccount), so later tests find a working
    plane."""
    assert cluster.is_local, "only the local control plane's API server can be restarted"
    started = time.monotonic()
    subprocess.run(
        [str(CLUSTER_DIR / "cluster.sh"), "restart-apiserver"],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    ready = time.monotonic() - started
    probe = f"faults-probe-{secrets.token_hex(3)}"
    cluster.kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": probe}})
    try:
        cluster.kubectl.in_namespace(probe).wait_for(
            "serviceaccount", "default", lambda _: True, timeout=CONTROLLERS_BACK_S,
            what="the controller-manager creates ServiceAccounts again",
        )  # fmt: skip
    finally:
        cluster.kubectl.run("delete", "namespace", probe, "--wait=false", check=False)
    return ready, time.monotonic() - started


def cloud_faults(cloud_url: str, **faults: Any) -> None:
    """Tell the cloud stand-in which faults to play (see clawdbot_testing.cloud)."""
    req = urllib.request.Request(
        f"{cloud_url}/_stub/faults", data=json.dumps(faults).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    urllib.request.urlopen(req, timeout=5).close()


# --- the table -----------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    tally: Tally
    rss: str = ""
    notes: str = ""


@dataclass
class FaultTable:
    """The suite's rows, written as a markdown table."""

    rows: list[Row] = field(default_factory=list)

    def add(self, scenario: str, tally: Tally, rss: str = "", notes: str = "") -> None:
        self.rows.append(Row(scenario, tally, rss, notes))
        print(f"fault scenario {scenario!r}: {tally.summary()} {rss} {notes}")

    def markdown(self) -> str:
        head = (
            "| scenario | sent | answered | failed | lost | local | cloud | cache "
            "| max latency | sidecar RSS | what happened |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n"
        )
        lines = []
        for r in self.rows:
            t = r.tally
            lines.append(
                f"| {r.scenario} | {t.sent} | {t.answered} | {t.failed} | {t.lost} "
                f"| {t.where['local']} | {t.where['cloud']} | {t.where['cache']} "
                f"| {t.max_latency_s():.1f} s | {r.rss} | {r.notes} |"
            )
        return head + "\n".join(lines) + "\n"

    def write(self) -> Path | None:
        """Write the table to $CLAWDBOT_FAULTS_TABLE or .run/faults.md; its path."""
        if not self.rows:
            return None
        path = Path(os.environ.get(TABLE_ENV) or DEFAULT_TABLE)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.markdown())
        return path


TABLE = FaultTable()


@contextlib.contextmanager
def watched_rss(pgid: int) -> Iterator[dict[str, int]]:
    """Sample a process group's RSS every 0.2 s for the block; yields a dict that holds
    ``before``, ``peak`` and ``after`` (KiB) once the block is done."""
    out = {"before": group_rss_kib(pgid), "peak": 0, "after": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            out["peak"] = max(out["peak"], group_rss_kib(pgid))

    thread = threading.Thread(target=sample, name="rss", daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join(timeout=5)
        out["after"] = group_rss_kib(pgid)
        out["peak"] = max(out["peak"], out["before"], out["after"])


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def rss_text(rss: dict[str, int]) -> str:
    return f"{mib(rss['before'])} → {mib(rss['peak'])} (peak) → {mib(rss['after'])} MiB"
