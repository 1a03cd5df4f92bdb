"""Servers the sidecar tests route to: the real ONNX runtime and the loopback cloud stub."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from clawdbot_runtime.tinylm import build_tiny_lm
from clawdbot_sidecar import cloudstub
from clawdbot_sidecar.core import RoutingCore
from clawdbot_sidecar.rest import RestFront
from tests.support.servers import STUB_API_KEY, runtime_server, serve_app


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
    async with serve_app(cloudstub.build_app(STUB_API_KEY)) as url:
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
