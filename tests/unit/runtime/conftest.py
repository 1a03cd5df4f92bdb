"""Fixtures of the runtime tests: model repositories and servers on ephemeral loopback ports."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from runtime_support import StartServer, write_linear

from clawdbot_runtime.config import RuntimeConfig
from clawdbot_runtime.server import RuntimeServer
from clawdbot_testing.models.tinyembed import DEMO_EMBED_NAME, build_tiny_embed
from clawdbot_testing.models.tinygpt import DEMO_GPT_NAME, build_tiny_gpt
from clawdbot_testing.models.tinylm import DEMO_MODEL_NAME, build_tiny_lm


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo chat model, built once per test session."""
    root = tmp_path_factory.mktemp("demo-template")
    build_tiny_lm(root)
    return root / DEMO_MODEL_NAME


@pytest.fixture(scope="session")
def gpt_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-style decoder (an Optimum-style export folder), built once per session."""
    root = tmp_path_factory.mktemp("gpt-template")
    build_tiny_gpt(root)
    return root / DEMO_GPT_NAME


@pytest.fixture(scope="session")
def embed_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT-style encoder (a sentence-transformers style export), built once."""
    root = tmp_path_factory.mktemp("embed-template")
    build_tiny_embed(root)
    return root / DEMO_EMBED_NAME


@pytest.fixture
def repo(tmp_path: Path, demo_template: Path) -> Path:
    """A fresh repository with the demo chat model and the linear model ``linear`` v1."""
    root = tmp_path / "models"
    shutil.copytree(demo_template, root / DEMO_MODEL_NAME)
    write_linear(root, "linear", 1)
    return root


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start servers on 127.0.0.1 with ephemeral ports; every one is drained at the end."""
    servers: list[RuntimeServer] = []

    async def start(repository: Path, **settings: Any) -> RuntimeServer:
        values: dict[str, Any] = {
            "model_repository": repository,
            "host": "127.0.0.1",
            "http_port": 0,
            "grpc_port": 0,
            "cpu_threads": 1,
            "inference_threads": 2,
            # Tests rescan explicitly unless they test polling.
            "repository_poll_interval_s": 0,
            "drain_timeout_s": 10,
        }
        values.update(settings)
        server = RuntimeServer(RuntimeConfig(**values))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.shutdown()


@pytest.fixture
async def server(start_server: StartServer, repo: Path) -> RuntimeServer:
    """A server over ``repo`` with default batching."""
    return await start_server(repo)


@pytest.fixture
async def http(server: RuntimeServer) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session bound to ``server``'s REST port."""
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as session:
        yield session
