"""Real servers on 127.0.0.1 for tests: the ONNX runtime as a process, aiohttp apps in-process.

The runtime is the project's real model server on the project's tiny model (real ONNX
inference); the cloud is the loopback stub that speaks OpenAI's protocol over a socket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

# A cold runtime start imports onnxruntime and warms the model up: a few seconds.
RUNTIME_START_TIMEOUT_S = 60.0
BIN = Path(sys.executable).parent
# The key the cloud stub in the tests expects.
STUB_API_KEY = "sk-test-cloud-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def runtime_server(repository: Path, *extra: str) -> Iterator[str]:
    """Run ``clawdbot-runtime serve`` on the repository; yields its OpenAI base URL."""
    http_port, grpc_port = free_port(), free_port()
    log_path = repository.parent / f"runtime-{http_port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "clawdbot-runtime"), "serve", "--model-repository", str(repository),
             "--host", "127.0.0.1", "--http-port", str(http_port),
             "--grpc-port", str(grpc_port), "--log-format", "text", *extra],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready", proc, log_path)
        yield f"http://127.0.0.1:{http_port}/v1"
    finally:
        stop_process(proc)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + RUNTIME_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.2)
    stop_process(proc)
    raise TimeoutError(f"{url} not ready after {RUNTIME_START_TIMEOUT_S}s:\n"
                       f"{log_path.read_text()[-3000:]}")  # fmt: skip


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp app on a free loopback port; yields its base URL."""
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()
