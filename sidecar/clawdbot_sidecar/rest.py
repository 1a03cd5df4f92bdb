"""The OpenAI-compatible HTTP front of the sidecar: a thin adapter around the routing core.

Apps point their OpenAI SDK at it (``OPENAI_BASE_URL=http://127.0.0.1:<port>/v1``). Errors
use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, so SDKs raise their
usual exceptions. Besides the API: ``/healthz`` (live), ``/readyz`` (ready, false while
draining) and ``/metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from clawdbot_sidecar.core import ApiKind, RequestError, RoutingCore

log = logging.getLogger("clawdbot.sidecar")

CORE: web.AppKey[RoutingCore] = web.AppKey("core", RoutingCore)
DRAINING: web.AppKey[list[bool]] = web.AppKey("draining", list)
# Set once the sidecar holds a configuration (at once for a file; with the discovery stream,
# after the first snapshot).
SYNCED: web.AppKey[asyncio.Event] = web.AppKey("synced", asyncio.Event)


def error_response(exc: RequestError, headers: dict[str, str] | None = None) -> web.Response:
    extra = dict(headers or {})
    if exc.status in (429, 503):
        extra["Retry-After"] = "1"
    return web.json_response(exc.body(), status=exc.status, headers=extra)


async def _read_body(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        request.app[CORE].metrics.rejected.labels("too_large").inc()
        raise RequestError(
            413,
            "the request body is larger than the sidecar's limit of "
            f"{request.app[CORE].config.limits.max_body_bytes} bytes",
            code="request_too_large",
        ) from exc
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise RequestError(400, f"the request body is not valid JSON: {exc}") from exc


def _handler(kind: ApiKind) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        core = request.app[CORE]
        try:
            body = await _read_body(request)
            answer = await core.handle(kind, body, request.headers)
        except RequestError as exc:
            return error_response(exc)
        if answer.stream is None:
            return web.json_response(answer.body, status=answer.status, headers=answer.headers)
        resp = web.StreamResponse(
            status=answer.status,
            headers={
                **answer.headers,
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
            },
        )
        await resp.prepare(request)
        async for chunk in answer.stream:
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    return handle


async def _models(request: web.Request) -> web.Response:
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": f"clawdbot-{where}"}
        for name, where in request.app[CORE].models().items()
    ]
    return web.json_response({"object": "list", "data": data})


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.Response:
    if request.app[DRAINING][0]:
        return web.Response(status=503, text="draining")
    if not request.app[SYNCED].is_set():
        return web.Response(status=503, text="waiting for the first discovery snapshot")
    return web.Response(text="ok")


async def _metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[CORE].metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _not_found(request: web.Request) -> web.Response:
    exc = RequestError(404, f"unknown path {request.path}; this is an OpenAI-compatible API")
    return error_response(exc)


def build_app(core: RoutingCore) -> web.Application:
    """The HTTP app; the body limit comes from the core's config."""
    app = web.Application(client_max_size=core.config.limits.max_body_bytes)
    app[CORE] = core
    app[DRAINING] = [False]
    app[SYNCED] = asyncio.Event()
    app[SYNCED].set()
    app.router.add_post("/v1/chat/completions", _handler(ApiKind.CHAT))
    app.router.add_post("/v1/completions", _handler(ApiKind.COMPLETIONS))
    app.router.add_post("/v1/embeddings", _handler(ApiKind.EMBEDDINGS))
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app
