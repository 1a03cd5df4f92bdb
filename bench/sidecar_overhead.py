"""Proxy overhead benchmark: what the routing sidecar adds to a request, next to other proxies.

One fast fake OpenAI upstream (a raw asyncio HTTP/1.1 server answering a fixed
``chat.completion``), and the same chat request (its prompt carries an e-mail address) sent
over loopback to each of:

- ``direct``: the upstream itself, no proxy (the baseline);
- ``nginx``: nginx as a plain reverse proxy with upstream keep-alive (skipped when no
  ``nginx`` binary is on PATH);
- ``litellm``: the LiteLLM proxy, installed by this script into its own virtual environment
  under ``.cache/bench-venvs/litellm`` on first use (skipped when that fails, or with
  ``--no-litellm``);
- ``sidecar``: ``clawdbot-sidecar serve`` with rules (a PII rule sends the request to the
  cloud target) and redaction on in pseudonymize mode, so every request is scanned,
  pseudonymized on the way out and restored on the way back (audit log off); it runs on
  uvloop's event loop, as it does wherever uvloop is installed;
- ``sidecar-asyncio``: the same sidecar on the standard library's event loop (what uvloop
  buys; skipped without uvloop, or with ``--no-asyncio-loop``).

Every proxy is pinned to CPU 0 (``taskset``; nginx runs one worker, LiteLLM one worker); the
load generator (a small keep-alive HTTP/1.1 client on asyncio protocols) and the upstream
share CPU 1. Latency is measured at concurrency 1, throughput at ``--concurrency`` (32)
closed-loop clients; targets take turns in ``--rounds`` rounds so background drift hits all
alike. ``added`` is the proxy's percentile minus the direct path's; ``req/s`` is the median of
the rounds, its p50/p99 over all of them. ``CPU us/req`` is the CPU time (user + system) the
proxy's processes used during the load phases divided by the requests they answered: unlike
the timings, it hardly moves when other work shares the machine, and 1e6 / it is the
throughput one core could give.

    .venv/bin/python bench/sidecar_overhead.py [--requests 600] [--load-requests 2000]
        [--concurrency 32] [--rounds 3] [--no-litellm] [--no-nginx] [--no-asyncio-loop]
        [--profile] [--profile-out FILE]

A load phase stops after 15 s whatever is left of its requests (LiteLLM hits that limit),
so a default run takes about two and a half minutes, LiteLLM's start included.

``--profile`` then runs the sidecar once more under cProfile at full load and prints its top
functions (the profiler's own cost inflates the absolute numbers; the shares are the point).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = ROOT / ".cache" / "bench-venvs" / "litellm"
PROXY_CPU = 0
CLIENT_CPU = 1
# Longest wait for a server to come up (LiteLLM imports for 10-30 s on a small machine).
READY_TIMEOUT_S = 120.0
# A load phase stops issuing requests after this long, however many are left.
PHASE_LIMIT_S = 15.0
# The key every request carries; LiteLLM refuses to start without a master key.
API_KEY = "sk-bench-5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5"
PROMPT = (
    "Please draft a short reply to jane.doe@example.com about the invoice for order 5512; "
    "thank her for the quick payment and keep it under three sentences."
)
ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Thank you, the invoice is paid."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 40, "completion_tokens": 8, "total_tokens": 48},
    },
    separators=(",", ":"),
).encode()


# --- the fake upstream -------------------------------------------------------------------


class _UpstreamProtocol(asyncio.Protocol):
    """Answers every complete HTTP/1.1 request on the connection with ANSWER, keep-alive."""

    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(ANSWER)).encode()
        + b"\r\nConnection: keep-alive\r\n\r\n"
        + ANSWER
    )

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = _content_length(self.buf[:end])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            self.buf = self.buf[total:]
            assert self.transport is not None
            self.transport.write(self.response)


def _content_length(head: bytes) -> int:
    lowered = head.lower()
    i = lowered.find(b"content-length:")
    if i < 0:
        return 0
    j = lowered.find(b"\r\n", i)
    return int(lowered[i + 15 : j if j >= 0 else len(lowered)].strip())


async def _serve_upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_UpstreamProtocol, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


# --- the load generator ------------------------------------------------------------------


class _ClientProtocol(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = self.buf[:end]
        status = int(head[9:12])
        if b"transfer-encoding: chunked" in head.lower():
            body_end = self.buf.find(b"\r\n0\r\n\r\n", end)
            if body_end < 0:
                return
            total = body_end + 7
        else:
            total = end + 4 + _content_length(head)
            if len(self.buf) < total:
                return
        self.buf = self.buf[total:]
        waiter, self.waiter = self.waiter, None
        waiter.set_result(status)

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


def _request_bytes(port: int, path: str) -> bytes:
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 64,
        }
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Phase:
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    errors: int = 0


async def run_phase(port: int, path: str, concurrency: int, requests: int) -> Phase:
    """``requests`` requests from ``concurrency`` closed-loop clients (bounded in time)."""
    loop = asyncio.get_running_loop()
    request = _request_bytes(port, path)
    conns = [
        (await loop.create_connection(_ClientProtocol, "127.0.0.1", port))[1]
        for _ in range(concurrency)
    ]
    phase = Phase()
    left = requests
    deadline = time.perf_counter() + PHASE_LIMIT_S

    async def client(conn: _ClientProtocol) -> None:
        nonlocal left
        while left > 0 and time.perf_counter() < deadline:
            left -= 1
            t0 = time.perf_counter()
            status = await conn.send(request)
            phase.latencies_s.append(time.perf_counter() - t0)
            if status != 200:
                phase.errors += 1

    start = time.perf_counter()
    try:
        await asyncio.gather(*(client(c) for c in conns))
    finally:
        phase.elapsed_s = time.perf_counter() - start
        for c in conns:
            if c.transport is not None:
                c.transport.close()
    return phase


# --- the targets -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Target:
    name: str
    port: int
    path: str = "/v1/chat/completions"
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None


def _wait_ready(target: Target, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until one chat request through the target answers 200."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if target.process is not None and target.process.poll() is not None:
            raise RuntimeError(f"{target.name} exited with {target.process.returncode}")
        try:
            phase = asyncio.run(run_phase(target.port, target.path, 1, 1))
            if phase.errors == 0 and phase.latencies_s:
                return
            last = "non-200 answer"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise RuntimeError(f"{target.name} not ready after {timeout_s:.0f} s: {last}")


def _spawn(
    cmd: list[str], cpu: int, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` pinned to ``cpu`` (with taskset, so threads and children inherit it)."""
    taskset = shutil.which("taskset")
    pinned = [taskset, "-c", str(cpu), *cmd] if taskset else cmd
    with log.open("wb") as out:
        process = subprocess.Popen(
            pinned,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    if not taskset:  # pin after the fact: a thread started before this stays unpinned
        os.sched_setaffinity(process.pid, {cpu})
    return process


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_upstream(work: Path) -> Target:
    port = free_port()
    process = _spawn(
        [sys.executable, __file__, "--_upstream", str(port)], CLIENT_CPU, work / "upstream.log"
    )
    return Target("upstream", port, process=process)


def start_nginx(work: Path, upstream: int) -> Target | None:
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        print("nginx: no nginx binary found; row skipped", flush=True)
        return None
    version = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    print(f"nginx: {version.stderr.strip()}", flush=True)
    port = free_port()
    prefix = work / "nginx"
    prefix.mkdir()
    temps = "\n".join(
        f"  {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
{temps}
  upstream fake {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    location / {{
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
    )
    cmd = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    process = _spawn(cmd, PROXY_CPU, work / "nginx.log")
    return Target("nginx", port, process=process, log=work / "nginx.log")


def ensure_litellm() -> Path | None:
    """The LiteLLM proxy's CLI in its own venv, installed on first use; None if that fails."""
    cli = LITELLM_VENV / "bin" / "litellm"
    if cli.exists():
        return cli
    print(f"litellm: installing 'litellm[proxy]' into {LITELLM_VENV.relative_to(ROOT)}", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
            check=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"litellm: install failed ({exc}); row skipped", flush=True)
        return None
    return cli if cli.exists() else None


def start_litellm(work: Path, upstream: int) -> Target | None:
    cli = ensure_litellm()
    if cli is None:
        return None
    version = subprocess.run(
        [
            str(LITELLM_VENV / "bin" / "python"),
            "-c",
            "import importlib.metadata as m;print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    print(f"litellm: version {version or 'unknown'}", flush=True)
    port = free_port()
    conf = work / "litellm.yaml"
    conf.write_text(
        f"""model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: sk-bench
litellm_settings:
  telemetry: false
"""
    )
    env = {
        # Offline: the bundled model price map, no telemetry, quiet logs.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "NO_PROXY": "127.0.0.1,localhost",
        "LITELLM_MASTER_KEY": API_KEY,
    }
    cmd = [str(cli), "--config", str(conf), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--num_workers", "1"]
    process = _spawn(cmd, PROXY_CPU, work / "litellm.log", env)
    return Target("litellm", port, process=process, log=work / "litellm.log")


def sidecar_config(work: Path, upstream: int) -> Path:
    conf = work / "sidecar.yaml"
    conf.write_text(
        f"""policy:
  localModels: [{{name: bench-local}}]
  cloud:
    baseURL: http://127.0.0.1:{upstream}/v1
    model: gpt-4o-mini
    maxRetries: 0
    pricing: {{inputPerMillionTokens: 0.15, outputPerMillionTokens: 0.6}}
  rules:
    - {{name: short-no-pii, match: {{maxTokens: 512, containsPII: false}}, target: local}}
    - {{name: medium, match: {{maxTokens: 2048}}, target: cloud}}
  defaultTarget: reject
  redaction: {{enabled: true, mode: pseudonymize, restoreInResponses: true}}
  audit: {{enabled: false}}
endpoints:
  - {{url: "http://127.0.0.1:{upstream}/v1", model: bench-local}}
"""
    )
    return conf


# The unchanged sidecar on the standard library's event loop (the serve command picks
# uvloop wherever it is installed; this replaces that choice).
ASYNCIO_MAIN = (
    "import sys; from clawdbot_sidecar import main as m; m._loop_factory = lambda: None; "
    "sys.exit(m.main(sys.argv[1:]))"
)


def sidecar_cmd(
    conf: Path, port: int, profile_to: Path | None = None, stdloop: bool = False
) -> list[str]:
    args = ["serve", "--config", str(conf), "--port", str(port), "--grpc-port", "0"]
    args += ["--log-level", "warning"]
    if stdloop:
        return [sys.executable, "-c", ASYNCIO_MAIN, *args]
    if profile_to is not None:
        return [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(profile_to),
            "-m",
            "clawdbot_sidecar.main",
            *args,
        ]
    return [sys.executable, "-m", "clawdbot_sidecar.main", *args]


def start_sidecar(work: Path, upstream: int, stdloop: bool = False) -> Target | None:
    if stdloop and importlib.util.find_spec("uvloop") is None:
        print("sidecar-asyncio: uvloop is not installed, so `sidecar` is this row", flush=True)
        return None
    name = "sidecar-asyncio" if stdloop else "sidecar"
    port = free_port()
    cmd = sidecar_cmd(sidecar_config(work, upstream), port, stdloop=stdloop)
    log = work / f"{name}.log"
    process = _spawn(cmd, PROXY_CPU, log, {"CLAWDBOT_CLOUD_API_KEY": "sk-bench"})
    return Target(name, port, process=process, log=log)


# --- the run -----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, its threads and its live descendants (nginx and
    LiteLLM serve from child processes)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


@dataclass
class Result:
    c1: list[float] = field(default_factory=list)
    load_latencies: list[float] = field(default_factory=list)
    round_rps: list[float] = field(default_factory=list)
    errors: int = 0
    load_cpu_s: float = 0.0
    load_requests: int = 0

    @property
    def cpu_us(self) -> float | None:
        """CPU per request under load, in microseconds (None: not measured)."""
        return self.load_cpu_s / self.load_requests * 1e6 if self.load_requests else None

    @property
    def rps(self) -> float:
        """The median round: one round disturbed by other work on the machine moves it less."""
        return float(np.median(self.round_rps)) if self.round_rps else 0.0


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000.0


def measure(targets: list[Target], args: argparse.Namespace) -> dict[str, Result]:
    results = {t.name: Result() for t in targets}
    for t in targets:  # warm-up: imports, connection pools, JIT-free but cache-warm paths
        asyncio.run(run_phase(t.port, t.path, 4, 200))
    for r in range(args.rounds):
        for t in targets:
            res = results[t.name]
            phase = asyncio.run(run_phase(t.port, t.path, 1, args.requests))
            res.c1 += phase.latencies_s
            res.errors += phase.errors
            cpu0 = cpu_seconds(t.process.pid) if t.process is not None else None
            phase = asyncio.run(run_phase(t.port, t.path, args.concurrency, args.load_requests))
            if t.process is not None and cpu0 is not None:
                res.load_cpu_s += cpu_seconds(t.process.pid) - cpu0
                res.load_requests += len(phase.latencies_s)
            res.load_latencies += phase.latencies_s
            res.round_rps.append(len(phase.latencies_s) / phase.elapsed_s)
            res.errors += phase.errors
            print(
                f"  round {r + 1}/{args.rounds} {t.name:15s} c=1 p50 {pct(res.c1, 50):.3f} ms"
                f"  c={args.concurrency} {res.round_rps[-1]:,.0f} req/s",
                flush=True,
            )
    return results


def report(results: dict[str, Result], concurrency: int) -> None:
    base = results["direct"]
    b50, b99 = pct(base.c1, 50), pct(base.c1, 99)
    print()
    print(
        f"{'target':15s} | {'c=1 p50 ms':>10s} {'p99 ms':>7s} {'added p50':>9s} {'added p99':>9s}"
        f" | {'c=' + str(concurrency) + ' req/s':>11s} {'p50 ms':>7s} {'p99 ms':>7s}"
        f" {'CPU us/req':>10s} | errors"
    )
    print("-" * 103)
    for name, r in results.items():
        a50 = f"{pct(r.c1, 50) - b50:9.3f}" if name != "direct" else f"{'':9s}"
        a99 = f"{pct(r.c1, 99) - b99:9.3f}" if name != "direct" else f"{'':9s}"
        cpu = f"{r.cpu_us:10,.0f}" if r.cpu_us is not None else f"{'':10s}"
        print(
            f"{name:15s} | {pct(r.c1, 50):10.3f} {pct(r.c1, 99):7.3f} {a50} {a99}"
            f" | {r.rps:11,.0f} {pct(r.load_latencies, 50):7.2f} {pct(r.load_latencies, 99):7.2f}"
            f" {cpu} | {r.errors}"
        )
    side = results.get("sidecar")
    if side is None:
        return
    print()
    added = pct(side.c1, 50) - b50
    if "litellm" in results:
        lite = results["litellm"]
        print(f"sidecar req/s / litellm req/s: {side.rps / lite.rps:.1f}x")
        if side.cpu_us and lite.cpu_us:
            print(f"litellm CPU per request / sidecar's: {lite.cpu_us / side.cpu_us:.1f}x")
    if "nginx" in results:
        nginx_added = pct(results["nginx"].c1, 50) - b50
        print(
            f"sidecar added p50 / nginx added p50: {added:.3f} / {nginx_added:.3f} ms"
            f" = {added / nginx_added:.1f}x"
        )
    print(f"sidecar added p50 at c=1: {added:.3f} ms (aim < 0.3 ms, redaction on)")


def profile_sidecar(work: Path, upstream: int, args: argparse.Namespace) -> None:
    port = free_port()
    out = work / "sidecar.prof"
    cmd = sidecar_cmd(sidecar_config(work, upstream), port, profile_to=out)
    process = _spawn(cmd, PROXY_CPU, work / "sidecar-prof.log", {"CLAWDBOT_CLOUD_API_KEY": "x"})
    target = Target("sidecar-profiled", port, process=process)
    try:
        _wait_ready(target)
        phase = asyncio.run(run_phase(port, target.path, args.concurrency, args.load_requests))
        print(f"\nprofiled sidecar: {len(phase.latencies_s) / phase.elapsed_s:,.0f} req/s")
    finally:
        _stop(process)
    if args.profile_out:
        shutil.copyfile(out, args.profile_out)
    stats = pstats.Stats(str(out))
    stats.strip_dirs().sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(35)


@contextlib.contextmanager
def running(targets: list[Target]) -> Iterator[None]:
    try:
        yield
    finally:
        for t in targets:
            _stop(t.process)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=600, help="per round, at concurrency 1")
    p.add_argument("--load-requests", type=int, default=2000, help="per round, under load")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-litellm", action="store_true")
    p.add_argument("--no-nginx", action="store_true")
    p.add_argument("--no-asyncio-loop", action="store_true", help="skip the sidecar-asyncio row")
    p.add_argument("--profile", action="store_true", help="then profile the sidecar")
    p.add_argument("--profile-out", type=Path, help="with --profile: keep the cProfile data")
    p.add_argument("--_upstream", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._upstream:
        asyncio.run(_serve_upstream(args._upstream))
        return
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs 2 CPUs: one for the proxy, one for the client and the upstream")
    os.sched_setaffinity(0, {CLIENT_CPU})

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        upstream = start_upstream(work)
        started: list[Target] = [upstream]
        with running(started):
            _wait_ready(upstream)
            targets = [Target("direct", upstream.port)]
            candidates: list[Callable[[], Target | None]] = []
            if not args.no_nginx:
                candidates.append(lambda: start_nginx(work, upstream.port))
            if not args.no_litellm:
                candidates.append(lambda: start_litellm(work, upstream.port))
            candidates.append(lambda: start_sidecar(work, upstream.port))
            if not args.no_asyncio_loop:
                candidates.append(lambda: start_sidecar(work, upstream.port, stdloop=True))
            for start in candidates:
                t = start()
                if t is None:
                    continue
                started.append(t)
                try:
                    _wait_ready(t)
                except RuntimeError as exc:
                    tail = t.log.read_text(errors="replace")[-2000:] if t.log else ""
                    print(f"{t.name}: {exc}; row skipped\n{tail}", flush=True)
                    _stop(t.process)
                    continue
                targets.append(t)
            print(
                f"targets: {', '.join(t.name for t in targets)}; proxies on CPU {PROXY_CPU},"
                f" client and upstream on CPU {CLIENT_CPU}",
                flush=True,
            )
            results = measure(targets, args)
            report(results, args.concurrency)
            if args.profile:
                for t in targets:
                    if t.name != "direct":
                        _stop(t.process)
                profile_sidecar(work, upstream.port, args)


if __name__ == "__main__":
    main()
