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

The apps of the pod are not trusted to be well-behaved, so everything a client can make the
server hold is bounded: the head (bytes and header count), the body, the answers queued
for a client that does not read (reading pauses while the write buffer is over its
high-water mark, as uvicorn's flow control does), the time a head or a body may take to
arrive (slow-loris), the time a client may leave an answer unread, and the number of
connections. The server never upgrades a connection: an ``Upgrade`` offer is answered as a
plain request with its body read as a body, and ``CONNECT`` is refused, so no request is
ever parsed out of a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
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
# How often idle connections and overdue requests are looked for, at most.
IDLE_SWEEP_S = 10.0
# A request's line and headers must arrive within this from its first byte (slow-loris: a
# client trickling a head byte by byte would hold a connection for ever). Apps of the pod
# send a head in one write over loopback; ten seconds covers a paused process.
HEADER_TIMEOUT_S = 10.0
# A request's body must arrive within this from the end of its head (4 MiB over loopback
# takes milliseconds; a minute covers a slow producer streaming its upload).
BODY_TIMEOUT_S = 60.0
# A client that reads nothing of an answer for this long is cut off: its unread bytes
# would otherwise hold the connection and its buffer for ever.
WRITE_TIMEOUT_S = 75.0
# Connections held at once. The apps of one pod need a few dozen (an OpenAI SDK pools 20
# keep-alive connections); past this, the longest-idle connection is closed for a new one,
# and a new one is refused when none is idle.
MAX_CONNECTIONS = 4096
# At the connection limit with no idle connection, one whose head has been arriving for
# longer than this (and that has nothing being answered) is closed for the new one: an app
# sends a head in one write, so only a slow-loris client is that slow, and a flood of them
# must not keep the pod's apps out for a whole header timeout.
SLOW_HEAD_S = 1.0
# Request line and headers together; real clients send well under 8 KiB.
MAX_HEAD_BYTES = 64 * 1024
# Header fields in one head (trailers not counted: they are ignored); real clients send
# a dozen or two.
MAX_HEADERS = 128
# Requests parsed but not yet answered on one connection (pipelining) before reading pauses.
MAX_PIPELINED = 16
# A read is parsed in slices of this size, so parsing can stop at MAX_PIPELINED within a
# read (a 256 KiB read of 18-byte requests held 14,000 of them, ~7 MB, at once).
PARSE_SLICE_BYTES = 8 * 1024
# After refusing a body as too large, the rest of it is read and dropped for up to this long
# (so the client gets the answer rather than a reset), then the connection is closed.
LINGER_S = 5.0

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def _content_length(value: str | None) -> int:
    """A Content-Length header's value (0 when absent; llhttp refuses malformed ones)."""
    if value is None:
        return 0
    try:
        return max(int(value), 0)
    except ValueError:
        return 0


@dataclass(slots=True)
class Request:
    """One parsed request. Header names are lower-cased; a repeated header keeps its last
    value; trailers of a chunked body are not headers and are dropped."""

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
    # (status, message) -> the 4xx answer to a request the server refuses by itself: 400
    # not valid HTTP, 405 CONNECT, 408 too slow, 431 a head over its limits.
    error: Callable[[int, str], Response]
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
    header_count: int = 0
    # Set once the head is parsed: header callbacks after it are a chunked body's trailers.
    headers_done: bool = False
    # When the head (then the body) must have arrived; None between requests.
    deadline: float | None = None
    # Body bytes of an Upgrade request still to come: llhttp stops parsing at the upgrade,
    # so they are read here, as the body they are, never as a request.
    raw_body_left: int = 0


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
        self.writing_paused = False
        self.writable: asyncio.Future[None] | None = None  # set while writing is paused
        self.last_active = self.loop.time()
        # Read but not parsed yet: the rest of a read that brought more pipelined requests
        # than may wait (see data_received).
        self.unparsed = b""
        self.queued_bytes = 0  # body bytes of the requests in `queue`
        # (method, keep-alive, chunked) of an Upgrade request whose body is being read raw.
        self._after_raw_body: tuple[str, bool, bool] = ("", False, False)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        if not self.server.admit(self):
            self.closed = True
            self.transport.abort()
            return
        self.server.connections.add(self)
        self.server.idle_connections[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connection_lost(self)
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)  # the writer sees `closed` and stops

    def pause_writing(self) -> None:
        # Over the transport's high-water mark: answers wait, and so does reading, so a
        # client that sends requests without reading the answers can't grow the buffer.
        self.writing_paused = True
        if self.writable is None or self.writable.done():
            self.writable = self.loop.create_future()
        self._flow()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self._flow()

    def data_received(self, data: bytes) -> None:
        if self.unparsed:  # reading is paused while bytes wait, but a read may be in flight
            data, self.unparsed = self.unparsed + data, b""
        pos, end = 0, len(data)
        # A loop, not recursion: a client may pipeline thousands of upgrade offers in one
        # read, each of which hands the rest of the read to a fresh parser.
        while pos < end and not self.refusing:
            if self._backlogged():
                # The rest is parsed once answers have made room (reading is paused till
                # then): one read of thousands of tiny pipelined requests never becomes
                # thousands of queued requests.
                self.unparsed = data[pos:]
                self._flow()
                return
            if self.state.raw_body_left:
                n = min(self.state.raw_body_left, end - pos)
                self._raw_body(data[pos : pos + n])
                pos += n
                continue
            piece = (
                data
                if pos == 0 and end <= PARSE_SLICE_BYTES
                else data[pos : pos + PARSE_SLICE_BYTES]
            )
            try:
                self.parser.feed_data(piece)
                pos += len(piece)
            except httptools.HttpParserUpgrade as exc:
                # An upgrade offer (h2c, websocket) the server does not take: the request is
                # answered as a plain one, and HTTP/1.1 goes on after it. llhttp stops at the
                # end of the head; the body, if any, is read as a body first.
                self.parser = httptools.HttpRequestParser(self)
                offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(piece)
                pos += offset
            except httptools.HttpParserError as exc:
                if not self.refusing:
                    self._refuse(self.server.refusals.error(400, f"malformed HTTP request: {exc}"))
                return

    # -- httptools callbacks (after a refusal, the rest of the buffer is ignored)

    def on_message_begin(self) -> None:
        if not self.refusing:
            now = self.loop.time()
            self.state = _State(deadline=now + self.server.header_timeout_s)
            self.server.idle_connections.pop(self, None)  # busy until answered
            heads = self.server.heads
            heads.pop(self, None)
            heads[self] = now  # the latest head to begin: last

    def on_url(self, url: bytes) -> None:
        if not self.refusing:
            self.state.url += url
            self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.refusing:
            return
        state = self.state
        self._count_head(len(name) + len(value))
        if state.headers_done or self.refusing:
            # A chunked body's trailers: never allowed to change the request's headers
            # (a proxy in front may have checked those). Counted above, so still bounded.
            return
        state.header_count += 1
        if state.header_count > MAX_HEADERS:
            self._refuse(
                self.server.refusals.error(
                    431, f"the request has more than {MAX_HEADERS} header fields"
                )
            )
            return
        state.headers[name.decode("latin-1").lower()] = value.decode("utf-8", "surrogateescape")

    def on_headers_complete(self) -> None:
        if self.refusing:
            return
        state = self.state
        state.headers_done = True
        self.server.heads.pop(self, None)
        state.deadline = self.loop.time() + self.server.body_timeout_s
        headers = state.headers
        limit = self.server.max_body_bytes()
        length = _content_length(headers.get("content-length"))
        if length > limit:
            self._refuse(self.server.refusals.too_large(limit))
            return
        if self.parser.should_upgrade():
            self._upgrade_offer(length)
            if self.refusing:
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
        method = self.parser.get_method().decode("ascii", "replace")
        keep_alive = self.parser.should_keep_alive()
        chunked = self.parser.get_http_version() != "1.0"
        if state.raw_body_left:
            # llhttp ends an Upgrade request at its head; its body follows in raw bytes.
            self._after_raw_body = (method, keep_alive, chunked)
            return
        self._complete(method, keep_alive, chunked)

    # -- requests

    def _complete(self, method: str, keep_alive: bool, chunked: bool) -> None:
        state = self.state
        state.deadline = None
        url = state.url.decode("utf-8", "surrogateescape")
        path, _, query = url.partition("?")
        if "%" in path:
            path = unquote(path)
        request = Request(method, path, query, state.headers, b"".join(state.body))
        self._enqueue(_Pending(request, keep_alive, method == "HEAD", chunked))

    def _upgrade_offer(self, length: int) -> None:
        """The head of a request that offers an upgrade (or is a CONNECT): refuse what
        can't be answered as a plain request, and arrange for its body to be read raw."""
        method = self.parser.get_method()
        error = self.server.refusals.error
        if method == b"CONNECT":
            # What follows a CONNECT is a tunnel's bytes, not HTTP: nothing after it on
            # this connection can be read as a request.
            self._refuse(error(405, "CONNECT is not supported: the sidecar is not a proxy"))
        elif "transfer-encoding" in self.state.headers:
            self._refuse(
                error(400, "an Upgrade request with a chunked body is not supported; "
                           "send it without the Upgrade header")
            )  # fmt: skip
        else:
            self.state.raw_body_left = length

    def _raw_body(self, data: bytes) -> None:
        """Take ``data`` (no more than is left) as an Upgrade request's body."""
        state = self.state
        self.on_body(data)
        state.raw_body_left -= len(data)
        if not state.raw_body_left and not self.refusing:
            self._complete(*self._after_raw_body)

    def _count_head(self, n: int) -> None:
        self.state.head_bytes += n
        if self.state.head_bytes > MAX_HEAD_BYTES:
            self._refuse(
                self.server.refusals.error(
                    431, f"the request headers are larger than {MAX_HEAD_BYTES // 1024} KiB"
                )
            )

    def overdue(self, now: float) -> bool:
        """Whether the request being read is past its deadline (while the server reads)."""
        deadline = self.state.deadline
        if deadline is None or self.reading_paused or self.refusing:
            return False
        return now > deadline

    def timed_out(self) -> None:
        """Refuse the request that did not arrive in time (408) and close after it."""
        what = "headers" if not self.state.headers_done else "body"
        limit = self.server.header_timeout_s if what == "headers" else self.server.body_timeout_s
        self._refuse(
            self.server.refusals.error(408, f"the request {what} did not arrive within {limit:g}s")
        )

    # -- answering

    def _refuse(self, answer: Response) -> None:
        """Answer the request being parsed with ``answer``, after those before it; last."""
        self.refusing = True
        self.state.deadline = None
        self._enqueue(_Pending(None, False, False, False, answer))

    def _enqueue(self, pending: _Pending) -> None:
        if self.task is not None:
            self.queue.append(pending)
            if pending.request is not None:
                self.queued_bytes += len(pending.request.body)
            self._flow()
            return
        self.task = self.loop.create_task(self._serve(pending))

    def _backlogged(self) -> bool:
        """Enough waits to be answered: MAX_PIPELINED requests, or a body limit's worth of
        bodies (16 queued bodies of 4 MiB each would hold 64 MiB per connection)."""
        return len(self.queue) >= MAX_PIPELINED or self.queued_bytes >= self.server.max_body_bytes()

    def _has_room(self) -> bool:
        """Half the backlog is answered: reading and parsing go on."""
        return (
            len(self.queue) < MAX_PIPELINED // 2
            and self.queued_bytes < self.server.max_body_bytes() // 2
        )

    def _flow(self) -> None:
        """Pause reading while answers can't be written or too many wait; resume after."""
        if self.writing_paused or self.unparsed or self._backlogged():
            pause = True
        elif self._has_room() or self.refusing:
            pause = False
        else:
            return  # in between: keep the current state (no flapping)
        transport = self.transport
        if pause == self.reading_paused or transport is None or self.closed:
            return
        self.reading_paused = pause
        if pause:
            transport.pause_reading()
            return
        transport.resume_reading()
        if self.state.deadline is not None:
            # The time reading was paused was the server's, not the client's.
            self.state.deadline = max(
                self.state.deadline, self.loop.time() + self.server.header_timeout_s
            )

    async def _serve(self, pending: _Pending) -> None:
        try:
            while True:
                keep_alive = await self._answer(pending)
                if not keep_alive or self.closed:
                    self._finish(pending)
                    return
                if not self.queue:
                    return
                # The next answer waits until the client has read enough of this one.
                await self._drain()
                pending = self.queue.popleft()
                if pending.request is not None:
                    self.queued_bytes -= len(pending.request.body)
                if self.unparsed and self._has_room():
                    rest, self.unparsed = self.unparsed, b""
                    self.data_received(rest)
                self._flow()
        except ConnectionError:
            return  # the client left, or stopped reading for WRITE_TIMEOUT_S
        finally:
            self.task = None
            self.last_active = self.loop.time()
            if self.idle and self.state.deadline is None and not self.closed:
                self.server.idle_connections[self] = None  # the most recently idle: last
            if self.server.closing and not self.queue:
                self.close()

    def _finish(self, last: _Pending) -> None:
        """The connection ends after ``last``'s answer."""
        self.queue.clear()
        self.queued_bytes = 0
        self.unparsed = b""
        if last.refusal is None or self.transport is None or self.closed:
            self.close()
            return
        self._flow()  # read again, to drop what the client still sends
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
        writable = self.writable
        if writable is not None and not writable.done():
            try:
                async with asyncio.timeout(self.server.write_timeout_s):
                    await writable
            except TimeoutError:
                self.abort()
                raise ConnectionResetError("the client stopped reading") from None
            if self.closed:
                raise ConnectionResetError("the client closed the connection")

    def abort(self) -> None:
        """Close at once, dropping what is unsent (a client that does not read)."""
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    @property
    def idle(self) -> bool:
        return self.task is None and not self.queue


class HttpServer:
    """Serves ``handler`` on a TCP port; see the module docstring for what it does.

    The limits default to this module's constants; tests pass shorter ones.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: Callable[[], int],
        refusals: Refusals,
        max_connections: int = MAX_CONNECTIONS,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        body_timeout_s: float = BODY_TIMEOUT_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.refusals = refusals
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.write_timeout_s = write_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        # Often enough that a deadline is enforced within half of itself.
        self._sweep_s = min(IDLE_SWEEP_S, header_timeout_s / 2, body_timeout_s / 2)
        self.connections: set[_Connection] = set()
        # Connections with no request in progress, the longest idle first: the one to
        # close when a new connection needs room, found in O(1) however many there are.
        self.idle_connections: OrderedDict[_Connection, None] = OrderedDict()
        # Connections whose head is arriving, by when it began (the oldest first).
        self.heads: OrderedDict[_Connection, float] = OrderedDict()
        self.refused_connections = 0
        """Connections closed at once because every one of max_connections was busy."""
        self.slow_heads_closed = 0
        """Connections closed at the limit for a new one while their head still trickled."""
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
        self._sweeper = self._loop.call_later(self._sweep_s, self._sweep)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    def admit(self, conn: _Connection) -> bool:
        """Whether a new connection may stay: at the limit, the one whose head has been
        arriving the longest, if for over SLOW_HEAD_S (a slow-loris client), makes room for
        it, else the longest-idle one; when every connection is busy, it is refused."""
        if len(self.connections) < self.max_connections:
            return True
        now = self.loop.time()
        while self.heads:  # first: a slow-loris client's, not an app's kept-alive one
            slowest, since = next(iter(self.heads.items()))
            if now - since < SLOW_HEAD_S:
                break
            self.heads.popitem(last=False)
            if not slowest.closed and slowest.idle:  # only reading a head, answering none
                self.slow_heads_closed += 1
                self._evict(slowest)
                return True
        while self.idle_connections:
            oldest, _ = self.idle_connections.popitem(last=False)
            if not oldest.closed:
                self._evict(oldest)
                return True
        self.refused_connections += 1
        return False

    def _evict(self, conn: _Connection) -> None:
        conn.close()
        # Gone now, not when the loop reports it: the next admission in the same batch of
        # accepts must not count it.
        self.connections.discard(conn)

    def connection_lost(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        self.idle_connections.pop(conn, None)
        self.heads.pop(conn, None)
        if self.closing and not self.connections:
            self._all_closed.set()

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            if conn.overdue(now):
                conn.timed_out()
            elif (
                conn.idle
                and conn.state.deadline is None
                and now - conn.last_active > self.keepalive_timeout_s
            ):
                conn.close()
        self._sweeper = self.loop.call_later(self._sweep_s, self._sweep)

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
