"""A small HTTP/1.1 server for the sidecar's REST front.

The sidecar answers a handful of routes for the apps of its own pod, over loopback, and every
request it proxies pays for the server's work twice over in latency (on the way in and on
the way out). A general framework's request and response objects, middleware chain and
router cost more CPU than the routing itself, so the front runs on this: asyncio protocols,
the C parser of ``httptools`` (llhttp, as in Node.js), one task per request, and a response
written with a single ``write``. What HTTP/1.1 needs from a server is here: keep-alive and
pipelining (answers in request order), chunked request bodies, ``Expect: 100-continue``, a
body limit checked before the body is read, chunked streaming with backpressure (a slow
reader pauses the writer), HEAD, an idle timeout, and a graceful close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import cast
from urllib.parse import unquote

import httptools

log = logging.getLogger("clawdbot.sidecar")

# A keep-alive connection with no request for this long is closed (aiohttp's default too).
KEEPALIVE_TIMEOUT_S = 75.0
# How often idle connections are looked for.
IDLE_SWEEP_S = 10.0
# Request line and headers together; real clients send well under 8 KiB.
MAX_HEAD_BYTES = 64 * 1024
# Requests parsed but not yet answered on one connection (pipelining) before reading pauses.
MAX_PIPELINED = 16
# After refusing a body as too large, the rest of it is read and dropped for up to this long
# (so the client gets the answer rather than a reset), then the connection is closed.
LINGER_S = 5.0

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    """One parsed request. Header names are lower-cased; a repeated header keeps its last
    value."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Response:
    """A complete answer."""

    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: Iterable[tuple[str, str]] = ()


@dataclass(slots=True)
class StreamingResponse:
    """An answer sent in chunks as ``chunks`` yields them (closed when the client leaves)."""

    status: int
    chunks: AsyncIterator[bytes]
    content_type: str = "text/event-stream"
    headers: Iterable[tuple[str, str]] = ()


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]


@dataclass(slots=True)
class Refusals:
    """The answers the server gives on its own, before any handler runs."""

    # (max_bytes) -> the 413 answer, when a body is over the limit.
    too_large: Callable[[int], Response]
    # (message) -> the 400 answer to a request that is not valid HTTP.
    bad_request: Callable[[str], Response]
    # () -> the 500 answer when a handler fails.
    internal_error: Callable[[], Response]


_date: tuple[int, bytes] = (0, b"")


def _date_header() -> bytes:
    """The Date header, formatted once a second."""
    global _date  # noqa: PLW0603 - a per-process cache of one value
    now = int(time.time())
    if _date[0] != now:
        _date = (now, f"date: {formatdate(now, usegmt=True)}\r\n".encode())
    return _date[1]


def _head(
    status: int, content_type: str, headers: Iterable[tuple[str, str]], extra: bytes
) -> bytearray:
    out = bytearray(b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")))
    out += _date_header()
    out += b"content-type: " + content_type.encode("latin-1") + b"\r\n"
    for name, value in headers:
        out += f"{name}: {value}\r\n".encode("latin-1", "replace")
    out += extra
    return out


@dataclass(slots=True)
class _Pending:
    """A parsed request waiting for its turn, or a refusal to send in its place."""

    request: Request | None
    keep_alive: bool
    head_only: bool
    chunked: bool  # the client speaks HTTP/1.1: a stream can be sent in chunks
    refusal: Response | None = None


@dataclass
class _State:
    """The request being parsed."""

    url: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    body: list[bytes] = field(default_factory=list)
    size: int = 0
    head_bytes: int = 0


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.state = _State()
        self.queue: deque[_Pending] = deque()
        self.task: asyncio.Task[None] | None = None  # answering; None while idle
        self.closed = False
        # Set once a request is refused (too large, malformed): the refusal is the last
        # answer; whatever the client still sends is read and dropped, then the connection
        # closes.
        self.refusing = False
        self.reading_paused = False
        self.writable: asyncio.Future[None] | None = None  # set while writing is paused
        self.last_active = self.loop.time()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connection_lost(self)
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)  # the writer sees `closed` and stops

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.refusing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # An upgrade offer (h2c, websocket) the server does not take: the request is
            # answered as a plain one, and HTTP/1.1 goes on after it.
            self.parser = httptools.HttpRequestParser(self)
            rest = data[exc.args[0] :] if exc.args and isinstance(exc.args[0], int) else b""
            if rest:
                self.data_received(rest)
        except httptools.HttpParserError as exc:
            if not self.refusing:
                self._refuse(self.server.refusals.bad_request(f"malformed HTTP request: {exc}"))

    # -- httptools callbacks (after a refusal, the rest of the buffer is ignored)

    def on_message_begin(self) -> None:
        if not self.refusing:
            self.state = _State()

    def on_url(self, url: bytes) -> None:
        if not self.refusing:
            self.state.url += url
            self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.refusing:
            return
        self._count_head(len(name) + len(value))
        self.state.headers[name.decode("latin-1").lower()] = value.decode(
            "utf-8", "surrogateescape"
        )

    def on_headers_complete(self) -> None:
        if self.refusing:
            return
        headers = self.state.headers
        limit = self.server.max_body_bytes()
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            self._refuse(self.server.refusals.too_large(limit))
            return
        expect = headers.get("expect")
        if (
            expect is not None
            and expect.lower() == "100-continue"
            and self.task is None
            and self.transport is not None
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.refusing:
            return
        state = self.state
        state.size += len(body)
        limit = self.server.max_body_bytes()
        if state.size > limit:  # chunked, so no Content-Length to check up front
            self._refuse(self.server.refusals.too_large(limit))
            return
        state.body.append(body)

    def on_message_complete(self) -> None:
        if self.refusing:
            return
        state = self.state
        url = state.url.decode("utf-8", "surrogateescape")
        path, _, query = url.partition("?")
        if "%" in path:
            path = unquote(path)
        method = self.parser.get_method().decode("ascii", "replace")
        request = Request(method, path, query, state.headers, b"".join(state.body))
        self._enqueue(
            _Pending(
                request,
                self.parser.should_keep_alive(),
                method == "HEAD",
                self.parser.get_http_version() != "1.0",
            )
        )

    # -- answering

    def _count_head(self, n: int) -> None:
        self.state.head_bytes += n
        if self.state.head_bytes > MAX_HEAD_BYTES:
            self._refuse(
                Response(431, b'{"error":{"message":"the request headers are larger than '
                         b'64 KiB","type":"invalid_request_error","param":null,"code":null}}')
            )  # fmt: skip

    def _refuse(self, answer: Response) -> None:
        """Answer the request being parsed with ``answer``, after those before it; last."""
        self.refusing = True
        self._enqueue(_Pending(None, False, False, False, answer))

    def _enqueue(self, pending: _Pending) -> None:
        if self.task is not None:
            self.queue.append(pending)
            if len(self.queue) >= MAX_PIPELINED and self.transport is not None:
                self.transport.pause_reading()
                self.reading_paused = True
            return
        self.task = self.loop.create_task(self._serve(pending))

    async def _serve(self, pending: _Pending) -> None:
        try:
            while True:
                keep_alive = await self._answer(pending)
                if not keep_alive or self.closed:
                    self._finish(pending)
                    return
                if not self.queue:
                    return
                pending = self.queue.popleft()
                if self.reading_paused and len(self.queue) < MAX_PIPELINED // 2:
                    assert self.transport is not None
                    self.transport.resume_reading()
                    self.reading_paused = False
        finally:
            self.task = None
            self.last_active = self.loop.time()
            if self.server.closing and not self.queue:
                self.close()

    def _finish(self, last: _Pending) -> None:
        """The connection ends after ``last``'s answer."""
        self.queue.clear()
        if last.refusal is None or self.transport is None or self.closed:
            self.close()
            return
        # A lingering close: our side is done (FIN after the answer) while what the client
        # still sends is dropped, so its kernel does not reset the connection before it has
        # read the answer. It closes on the client's FIN or after LINGER_S.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.close)

    async def _answer(self, pending: _Pending) -> bool:
        """Send the answer to one request; returns whether the connection stays open."""
        if pending.refusal is not None:
            self._write_response(pending.refusal, False, False)
            return False
        assert pending.request is not None
        try:
            answer = await self.server.handler(pending.request)
        except Exception:
            log.exception("the HTTP handler failed on %s %s", pending.request.method,
                          pending.request.path)  # fmt: skip
            answer = self.server.refusals.internal_error()
        keep_alive = pending.keep_alive and not self.server.closing
        if isinstance(answer, Response):
            self._write_response(answer, keep_alive, pending.head_only)
            return keep_alive
        try:
            return await self._write_stream(answer, pending, keep_alive and pending.chunked)
        except ConnectionError:
            return False  # the client left mid-stream
        except Exception:
            # The head is out: too late for an error status. Closing without the final
            # chunk tells the client the answer is incomplete.
            log.exception("the stream for %s %s failed", pending.request.method,
                          pending.request.path)  # fmt: skip
            return False

    def _write_response(self, answer: Response, keep_alive: bool, head_only: bool) -> None:
        if self.closed or self.transport is None:
            return
        extra = b"content-length: %d\r\n" % len(answer.body)
        if not keep_alive:
            extra += b"connection: close\r\n"
        head = _head(answer.status, answer.content_type, answer.headers, extra)
        head += b"\r\n"
        if not head_only:
            head += answer.body
        self.transport.write(head)

    async def _write_stream(
        self, answer: StreamingResponse, pending: _Pending, keep_alive: bool
    ) -> bool:
        chunks = answer.chunks
        chunked = pending.chunked
        try:
            if self.closed or self.transport is None:
                return False
            extra = b"cache-control: no-cache\r\n"
            if chunked:
                extra += b"transfer-encoding: chunked\r\n"
            if not keep_alive:
                extra += b"connection: close\r\n"
            head = _head(answer.status, answer.content_type, answer.headers, extra)
            self.transport.write(bytes(head + b"\r\n"))
            if pending.head_only:
                return keep_alive
            async for chunk in chunks:
                if not chunk:
                    continue
                await self._drain()
                self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await self._drain()
            if chunked:
                self.transport.write(b"0\r\n\r\n")
            return keep_alive  # an HTTP/1.0 stream ends with the connection (not keep-alive)
        finally:
            # Also when the client left mid-stream: the producer accounts the request and
            # releases its upstream connection in its own cleanup, now rather than at GC.
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("the client closed the connection")
        if self.writable is not None and not self.writable.done():
            await self.writable
            if self.closed:
                raise ConnectionResetError("the client closed the connection")

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    @property
    def idle(self) -> bool:
        return self.task is None and not self.queue


class HttpServer:
    """Serves ``handler`` on a TCP port; see the module docstring for what it does."""

    def __init__(
        self, handler: Handler, *, max_body_bytes: Callable[[], int], refusals: Refusals
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.refusals = refusals
        self.connections: set[_Connection] = set()
        self.closing = False
        self._all_closed = asyncio.Event()  # set when closing and the last connection is gone
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "start() the server first"
        return self._loop

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0: a free port, see :attr:`port`)."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _Connection(self), host, port, backlog=1024
        )
        self._sweeper = self._loop.call_later(IDLE_SWEEP_S, self._sweep)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    def connection_lost(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        if self.closing and not self.connections:
            self._all_closed.set()

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            if conn.idle and now - conn.last_active > KEEPALIVE_TIMEOUT_S:
                conn.close()
        self._sweeper = self.loop.call_later(IDLE_SWEEP_S, self._sweep)

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop listening, close idle connections, give answers in progress ``grace_s`` to
        finish, then close the rest."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), grace_s)
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
