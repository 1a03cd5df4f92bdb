"""Servers the sidecar tests route to: the real ONNX runtime and the loopback cloud stub."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from sidecar_support import API_KEY, Sidecar, StartSidecar

from clawdbot_sidecar.config import SidecarConfig
from clawdbot_sidecar.fronts.rest import RestFront
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.upstream import Upstream
from clawdbot_testing import cloud as cloud_standin
from clawdbot_testing.models.tinylm import build_tiny_lm
from tests.support.servers import STUB_API_KEY, runtime_server, serve_app

# Connections a filled backlog is probed with before giving up (the kernel keeps 1 for
# listen(0) on Linux; other kernels a few more).
MAX_BACKLOG_FILL = 16


@pytest.fixture(scope="session")
def local_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The project's ONNX runtime serving its tiny chat model (real inference), one process
    for the whole session."""
    repo = tmp_path_factory.mktemp("models") / "repo"
    build_tiny_lm(repo)
    with runtime_server(repo) as url:
        yield url


@pytest.fixture
async def cloud() -> AsyncIterator[str]:
    """A fresh cloud stub per test (its recorded requests and faults start empty)."""
    async with serve_app(cloud_standin.build_app(STUB_API_KEY)) as url:
        yield url


ServeFront = Callable[[RoutingCore], contextlib.AbstractAsyncContextManager[str]]


@contextlib.asynccontextmanager
async def _serve_front(core: RoutingCore) -> AsyncIterator[str]:
    front = RestFront(core)
    await front.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{front.port}"
    finally:
        await front.close()


@pytest.fixture
def serve_front() -> ServeFront:
    """``async with serve_front(core) as url``: the sidecar's HTTP front for ``core`` on a
    free loopback port."""
    return _serve_front


@pytest.fixture
async def make_sidecar(serve_front: ServeFront) -> AsyncIterator[StartSidecar]:
    """Start sidecars for a policy and endpoint list; all stop after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            spec: dict[str, Any],
            endpoints: list[str],
            *,
            endpoint_model: str = "tiny-chat",
            **limits: Any,
        ) -> Sidecar:
            config = SidecarConfig.model_validate(
                {
                    "policy": spec,
                    "endpoints": [{"url": u, "model": endpoint_model} for u in endpoints],
                    "limits": limits,
                }
            ).model_copy(update={"cloud_api_key": API_KEY})
            # Long: the core passes its limits' connect timeouts with each call, and a test
            # of those must not pass on this default.
            upstream = Upstream.create(connect_timeout_s=30.0)
            stack.push_async_callback(upstream.close)
            core = RoutingCore(config, upstream, seed=1)
            stack.push_async_callback(core.close)
            url = await stack.enter_async_context(serve_front(core))
            return Sidecar(url, core)

        yield start


@pytest.fixture
def blackhole() -> Iterator[str]:
    """``http://127.0.0.1:<port>/v1`` of a socket that listens but never accepts, its backlog
    full: a connect there gets no SYN-ACK and hangs, like an endpoint whose node vanished.
    """
    listener = socket.socket()
    held: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(MAX_BACKLOG_FILL):
            probe = socket.socket()
            probe.settimeout(0.2)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                probe.close()  # the backlog is full: the next connect hangs the same way
                break
            held.append(probe)
        else:
            pytest.fail(f"the backlog of a listen(0) socket took {MAX_BACKLOG_FILL} connections")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for conn in held:
            conn.close()
        listener.close()


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:<port>/v1`` of a server that accepts every connection and reads
    the request, but never answers: a model server whose process is wedged (a deadlocked
    runtime, a stopped container whose socket the kernel still serves)."""
    listener = socket.socket()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)  # held open, never read from or written to

    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    thread = threading.Thread(target=serve, name="silent-endpoint", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()
