"""The REST front's own answers (routes, errors, readiness, HEAD) and what happens when an
app leaves in the middle of a streamed answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from clawdbot_sidecar.config import SidecarConfig
from clawdbot_sidecar.fronts.rest import RestFront
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.upstream import Upstream
from tests.support.servers import serve_app

# The slow upstream's pace: one SSE event per this many seconds, for at most this many.
EVENT_EVERY_S = 0.02
MAX_EVENTS = 500


class SlowStream:
    """An OpenAI-style SSE upstream that streams slowly; records when its client leaves."""

    def __init__(self) -> None:
        self.sent = 0
        self.client_left = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        event = {"id": "c", "object": "chat.completion.chunk", "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "word "}}]}  # fmt: skip
        try:
            for _ in range(MAX_EVENTS):
                await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                self.sent += 1
                await asyncio.sleep(EVENT_EVERY_S)
        finally:  # a reset, or the server cancelling the handler of a closed connection
            if self.sent < MAX_EVENTS:
                self.client_left.set()
        return resp


@contextlib.asynccontextmanager
async def front(cloud_url: str) -> AsyncIterator[tuple[RestFront, str]]:
    config = SidecarConfig.model_validate(
        {
            "policy": {
                "cloud": {"baseURL": f"{cloud_url}/v1", "model": "m", "maxRetries": 0},
                "defaultTarget": "cloud",
                "audit": {"enabled": False},
            },
            "limits": {"maxBodyBytes": 4096},
        }
    )
    upstream = Upstream.create(connect_timeout_s=1.0)
    core = RoutingCore(config, upstream, seed=1)
    rest = RestFront(core)
    await rest.start("127.0.0.1", 0)
    try:
        yield rest, f"http://127.0.0.1:{rest.port}"
    finally:
        await rest.close()
        await core.close()
        await upstream.close()


@pytest.fixture
async def slow() -> AsyncIterator[tuple[SlowStream, str]]:
    stream = SlowStream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", stream.handle)
    async with serve_app(app) as url:
        yield stream, url


async def test_unknown_paths_and_methods_get_openai_404s(slow: tuple[SlowStream, str]) -> None:
    async with front(slow[1]) as (_, url), aiohttp.ClientSession() as s:
        for method, path in (("GET", "/v1/chat/completions"), ("POST", "/v2/x"), ("PUT", "/")):
            async with s.request(method, f"{url}{path}") as r:
                assert r.status == 404
                error = (await r.json())["error"]
                assert (
                    error["type"] == "invalid_request_error" and "unknown path" in error["message"]
                )


async def test_bad_bodies_get_400_and_413(slow: tuple[SlowStream, str]) -> None:
    async with front(slow[1]) as (_, url), aiohttp.ClientSession() as s:
        async with s.post(f"{url}/v1/chat/completions", data=b"[1,") as r:
            assert r.status == 400 and "not valid JSON" in (await r.json())["error"]["message"]
        async with s.post(f"{url}/v1/chat/completions", data=b"x" * 5000) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "request_too_large"
        async with s.get(f"{url}/metrics") as r:
            assert 'clawdbot_sidecar_rejected_requests_total{reason="too_large"} 1.0' in (
                await r.text()
            )


async def test_readiness_follows_draining_and_sync(slow: tuple[SlowStream, str]) -> None:
    async with front(slow[1]) as (rest, url), aiohttp.ClientSession() as s:
        async with s.get(f"{url}/readyz") as r:
            assert r.status == 200 and await r.text() == "ok"
        async with s.head(f"{url}/healthz") as r:
            assert r.status == 200 and r.headers["Content-Length"] == "2"
        rest.synced = asyncio.Event()
        async with s.get(f"{url}/readyz") as r:
            assert r.status == 503 and "discovery" in await r.text()
        rest.draining = True
        async with s.get(f"{url}/readyz") as r:
            assert r.status == 503 and await r.text() == "draining"
        async with s.get(f"{url}/healthz") as r:
            assert r.status == 200  # live while draining


async def test_an_app_leaving_mid_stream_is_accounted_and_frees_the_upstream(
    slow: tuple[SlowStream, str],
) -> None:
    stream, cloud = slow
    async with front(cloud) as (rest, _):
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        reader, writer = await asyncio.open_connection("127.0.0.1", rest.port)
        data = json.dumps(body).encode()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(data), data)
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"transfer-encoding: chunked" in head and b"x-clawdbot-target: cloud" in head
        assert b"data: " in await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
        writer.transport.abort()
        # The sidecar notices at its next write, closes its upstream stream, accounts 499.
        await asyncio.wait_for(stream.client_left.wait(), 5)
        assert stream.sent < MAX_EVENTS
        for _ in range(100):  # bounded: until the core has accounted the request
            if rest.core.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        assert rest.core.in_flight == 0
        metrics: Any = rest.core.metrics.requests
        assert metrics.labels("chat/completions", "cloud", "499")._value.get() == 1.0


async def test_probe_port_answers_health_and_readiness_only(slow: tuple[SlowStream, str]) -> None:
    """The kubelet's probes reach the pod's IP, the API stays on loopback: the probe port
    answers /healthz and /readyz (readiness as on the API port) and nothing of the API."""
    async with front(slow[1]) as (rest, url), aiohttp.ClientSession() as s:
        port = await rest.start_probes("127.0.0.1", 0)
        probe = f"http://127.0.0.1:{port}"
        assert port != rest.port
        for path in ("/healthz", "/readyz"):
            async with s.get(f"{probe}{path}") as r:
                assert r.status == 200 and await r.text() == "ok"
        for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                             ("GET", "/metrics")):  # fmt: skip
            async with s.request(method, f"{probe}{path}", json={}) as r:
                assert r.status == 404, path
        rest.draining = True
        async with s.get(f"{probe}/readyz") as r:
            assert r.status == 503
        async with s.get(f"{url}/v1/models") as r:
            assert r.status == 200
