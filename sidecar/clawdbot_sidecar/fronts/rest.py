"""The OpenAI-compatible HTTP front of the sidecar: a thin adapter around the routing core.

Apps point their OpenAI SDK at it (``OPENAI_BASE_URL=http://127.0.0.1:<port>/v1``). Errors
use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, so SDKs raise their
usual exceptions. Besides the API: ``/healthz`` (live), ``/readyz`` (ready, false while
draining) and ``/metrics`` (Prometheus). It runs on the sidecar's own small HTTP/1.1 server
(:mod:`clawdbot_sidecar.fronts.http`), which costs a fraction of a framework's CPU per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from clawdbot_api.openai_wire import SSE_DONE, dumps, loads, sse_event
from clawdbot_sidecar.accounting.feedback import FeedbackResult, parse_feedback
from clawdbot_sidecar.errors import RequestError, StreamBroken
from clawdbot_sidecar.fronts.audio import AudioFront
from clawdbot_sidecar.fronts.http import (
    HttpServer,
    Refusals,
    Request,
    Response,
    StreamingResponse,
)
from clawdbot_sidecar.fronts.messages import MessagesFront
from clawdbot_sidecar.fronts.responses import ResponsesFront
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.routing.request import ApiKind, Inbound

log = logging.getLogger("clawdbot.sidecar")

TEXT = "text/plain; charset=utf-8"
# Seconds an app should wait before retrying a 429 (overloaded) or 503 (no target now).
RETRY_AFTER_S = "1"

Route = Callable[[Request], Awaitable[Response | StreamingResponse]]


async def sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """The core's chunks as server-sent events, ending ``data: [DONE]``; a stream that broke
    off ends with an error event first (the status line is sent already), as OpenAI's does."""
    try:
        async for chunk in chunks:
            yield sse_event(chunk)
    except StreamBroken as exc:
        yield sse_event(exc.body())
    finally:
        # Also when the app left: the core accounts the request and closes the upstream.
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    yield SSE_DONE


def error_response(exc: RequestError, headers: dict[str, str] | None = None) -> Response:
    """A RequestError as an HTTP answer in OpenAI's error shape."""
    extra = dict(headers or {})
    if exc.status in (429, 503):
        extra["Retry-After"] = RETRY_AFTER_S
    return Response(exc.status, dumps(exc.body()), headers=extra.items())


class RestFront:
    """The HTTP front of one routing core: routes, request parsing and answer encoding."""

    def __init__(self, core: RoutingCore) -> None:
        self.core = core
        # Set on SIGTERM: /readyz fails so no new traffic is sent while requests finish.
        self.draining = False
        # Set once the sidecar holds a configuration (at once for a file; with the discovery
        # stream, after the first snapshot, whose client replaces this event).
        self.synced = asyncio.Event()
        self.synced.set()
        # The other APIs apps use, translated onto chat completions (docs/api.md).
        self.responses = ResponsesFront(core)
        messages, audio = MessagesFront(core), AudioFront(core)
        self._routes: dict[tuple[str, str], Route] = {
            ("POST", "/v1/responses"): self.responses.handle,
            ("POST", "/v1/messages"): messages.handle,
            ("POST", "/v1/messages/count_tokens"): messages.count_tokens,
            ("POST", "/v1/audio/transcriptions"): audio.transcriptions,
            ("POST", "/v1/audio/translations"): audio.translations,
            ("POST", "/v1/chat/completions"): self._api(ApiKind.CHAT),
            ("POST", "/v1/completions"): self._api(ApiKind.COMPLETIONS),
            ("POST", "/v1/embeddings"): self._api(ApiKind.EMBEDDINGS),
            ("POST", "/v1/feedback"): self._feedback,
            ("GET", "/v1/models"): self._models,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
            ("GET", "/metrics"): self._metrics,
        }
        self.server = HttpServer(
            self._dispatch,
            # Read per request: a reloaded policy's limit applies at once.
            max_body_bytes=lambda: self.core.config.limits.max_body_bytes,
            refusals=Refusals(
                too_large=self._too_large,
                error=lambda status, message: error_response(RequestError(status, message)),
                internal_error=self._internal_error,
            ),
        )

    async def start(self, host: str, port: int) -> None:
        """Serve on ``host:port`` (0 picks a free port: see :attr:`port`)."""
        await self.server.start(host, port)

    @property
    def port(self) -> int:
        return self.server.port

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop serving; answers in progress get ``grace_s`` to finish."""
        await self.server.close(grace_s)

    async def _dispatch(self, request: Request) -> Response | StreamingResponse:
        method = "GET" if request.method == "HEAD" else request.method
        route = self._routes.get((method, request.path))
        if route is None:
            exc = RequestError(
                404, f"unknown path {request.path}; this is an OpenAI-compatible API"
            )
            return error_response(exc)
        return await route(request)

    def _internal_error(self) -> Response:
        exc = RequestError(
            500, "the sidecar failed on this request; see its log", type_="server_error"
        )
        return error_response(exc)

    def _too_large(self, limit: int) -> Response:
        self.core.metrics.rejected.labels("too_large").inc()
        return error_response(
            RequestError(
                413,
                f"the request body is larger than the sidecar's limit of {limit} bytes",
                code="request_too_large",
            )
        )

    def _api(self, kind: ApiKind) -> Route:
        async def handle(request: Request) -> Response | StreamingResponse:
            try:
                try:
                    body: Any = loads(request.body)
                except ValueError as exc:
                    raise RequestError(400, f"the request body is not valid JSON: {exc}") from exc
                answer = await self.core.handle(Inbound(kind, body, request.headers))
            except RequestError as exc:
                return error_response(exc)
            headers = answer.headers.items()
            if answer.chunks is None:
                return Response(200, dumps(answer.body), headers=headers)
            return StreamingResponse(200, sse(answer.chunks), headers=headers)

        return handle

    async def _feedback(self, request: Request) -> Response:
        """POST /v1/feedback: ``{"request_id": <x-clawdbot-request-id>, "score": 0..1}``."""
        try:
            try:
                body: Any = loads(request.body)
            except ValueError as exc:
                raise RequestError(400, f"the request body is not valid JSON: {exc}") from exc
            answer_id, score = parse_feedback(body)
        except RequestError as exc:
            return error_response(exc)
        result = self.core.feedback(answer_id, score)
        if result == FeedbackResult.UNKNOWN:
            return error_response(
                RequestError(
                    404,
                    f"no answer {answer_id!r} awaits feedback: unknown, or older than the "
                    "policy's quality.feedback.windowSeconds",
                    code="unknown_request_id",
                )
            )
        if result == FeedbackResult.DUPLICATE:
            return error_response(
                RequestError(409, f"answer {answer_id!r} was scored already", code="already_scored")
            )
        return Response(200, dumps({"request_id": answer_id, "status": result.value}))

    async def _models(self, request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": f"clawdbot-{where}"}
            for name, where in self.core.models().items()
        ]
        return Response(200, dumps({"object": "list", "data": data}))

    async def _healthz(self, request: Request) -> Response:
        return Response(200, b"ok", TEXT)

    async def _readyz(self, request: Request) -> Response:
        if self.draining:
            return Response(503, b"draining", TEXT)
        if not self.synced.is_set():
            return Response(503, b"waiting for the first discovery snapshot", TEXT)
        return Response(200, b"ok", TEXT)

    async def _metrics(self, request: Request) -> Response:
        return Response(200, generate_latest(self.core.metrics.registry), CONTENT_TYPE_LATEST)
