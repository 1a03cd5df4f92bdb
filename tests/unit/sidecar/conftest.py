"""Servers the sidecar tests route to: the real ONNX runtime and the loopback cloud stub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from clawdbot_runtime.tinylm import build_tiny_lm
from clawdbot_sidecar import cloudstub
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
