"""Run ``clawdbot-operator`` as a real process against the e2e cluster, stopped by its pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

OPERATOR = Path(sys.executable).parent / "clawdbot-operator"
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Operator:
    """A running operator process, its ports and its log."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, ports: Mapping[str, int]):
        self.proc = proc
        self.log = log
        self.metrics_port = ports["metrics"]
        self.webhook_port = ports["webhook"]
        self.discovery_port = ports["discovery"]
        self.prometheus_port = ports["prometheus"]

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> int:
        """SIGKILL the process, as an OOM kill or a lost node would end it: no shutdown
        handlers run, requests in flight are cut. Returns its exit status once reaped."""
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=10)


@contextlib.contextmanager
def run_operator(
    kubeconfig: str,
    namespace: str,
    log: Path,
    *,
    routing: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    print_log: bool = True,
    extra_args: Sequence[str] = (),
) -> Iterator[Operator]:
    """The operator watching ``namespace``; with ``routing``, its webhook and discovery stream
    listen on free loopback ports (otherwise they are off). ``extra_args`` are appended to
    its command line (e.g. ``--leader-elect``)."""
    names = ("metrics", "health", "webhook", "discovery", "prometheus")
    ports = {name: free_port() for name in names}
    if not routing:
        ports["webhook"] = ports["discovery"] = 0
    environ = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    environ.update(
        {
            "CLAWDBOT_RESYNC_SECONDS": "2",
            "CLAWDBOT_WEBHOOK_PORT": str(ports["webhook"]),
            "CLAWDBOT_DISCOVERY_PORT": str(ports["discovery"]),
            **(env or {}),
        }
    )
    # Ports the caller chose (to name them before the operator starts) win.
    ports["webhook"] = int(environ["CLAWDBOT_WEBHOOK_PORT"])
    ports["discovery"] = int(environ["CLAWDBOT_DISCOVERY_PORT"])
    args = [
        *(["--namespace", namespace] if namespace else []),  # "": every namespace
        "--kubeconfig", kubeconfig,
        "--bind-address", "127.0.0.1",
        "--metrics-port", str(ports["metrics"]),
        "--health-port", str(ports["health"]),
        "--prometheus-port", str(ports["prometheus"]),
        "--accept-load-reports",
        *extra_args,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(OPERATOR), *args], stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=cwd
        )
    op = Operator(proc, log, ports)
    try:
        # kopf's liveness endpoint answers once the operator runs.
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                url = f"http://127.0.0.1:{ports['health']}/healthz"
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the operator did not start:\n{op.tail()}") from None
                time.sleep(0.2)
        yield op
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if print_log:  # pytest shows it with a failed test's output
            print(f"--- operator log (tail) ---\n{op.tail()}")
