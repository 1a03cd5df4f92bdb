"""HTTP calls to OpenAI-compatible upstreams (local model servers and the cloud).

Both kinds speak the same protocol, so one client serves both, JSON answers and event
streams alike: a small keep-alive HTTP/1.1 client (a pool of idle connections per upstream,
one request per connection at a time, a pre-built header block, the C parser of
``httptools`` for the answer). A general client builds request and response objects,
header multidicts and trace hooks on every call, which cost more CPU than all of the
sidecar's routing and redaction together.

A streamed call returns only once the upstream has answered with its status line: until
then nothing has been sent to the app, and the caller can still fall back to another target.
Its events are read as the app consumes them; a slow app pauses reading from the upstream
(backpressure), so a stream never buffers more than :data:`STREAM_BUFFER_BYTES`.

Everything an upstream sends is bounded: answers to :data:`MAX_ANSWER_BYTES` (compressed or
not: a small gzip body that inflates past the limit is refused, not inflated), event lines to
:data:`clawdbot_api.openai_wire.MAX_SSE_LINE_BYTES`, JSON nesting to
:data:`clawdbot_api.openai_wire.MAX_JSON_DEPTH`. A compressed body is inflated in bounded
steps (a stream's as the app reads it), so a bomb costs one step of memory, not its size.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Final, cast
from urllib.parse import urlsplit

import httptools

from clawdbot_api.openai_wire import SseDecoder, SseError, dumps, loads

__all__ = ["StreamHandle", "Upstream", "UpstreamError", "backoff_delay", "retry_after"]

# Statuses worth another try at the same upstream (rate limited, overloaded, restarting).
# 529 is Anthropic's "overloaded".
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504, 529})
BACKOFF_BASE_S = 0.2
BACKOFF_MAX_S = 5.0
# An idle pooled connection older than this is closed rather than reused: servers close
# theirs after 5-75 s, and a request written into a connection the server is closing fails.
IDLE_CONNECTION_S = 15.0
# Idle connections kept per upstream; more only while a burst lasts.
MAX_IDLE_PER_UPSTREAM = 256
# An answer larger than this is a broken upstream (OpenAI answers are kilobytes).
MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024
# Unread stream bytes at which reading from the upstream pauses until the app catches up;
# also what a compressed stream is inflated by at a time.
STREAM_BUFFER_BYTES: Final = 256 * 1024
# A compressed whole answer is inflated by this much at a time, each step checked against
# MAX_ANSWER_BYTES, so refusing a bomb never holds more than the limit.
INFLATE_STEP_BYTES: Final = 1024 * 1024
USER_AGENT = "clawdbot-sidecar"
# Upstream URLs come from config (a handful in practice); the parse cache is cleared beyond.
MAX_CACHED_TARGETS = 1024
MAX_CACHED_HEADER_BLOCKS = 64


class UpstreamError(Exception):
    """A call that produced no usable answer.

    ``kind`` is ``connect`` (nothing reached the server: safe to retry anywhere; a connect
    that outlasts its connect timeout is one), ``timeout``, ``status`` (an HTTP error
    status) or ``protocol`` (an unparsable answer). ``retry_after_s`` is the wait an error
    status asked for (``Retry-After``), if any.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        body: Any = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.body = body
        self.retry_after_s = retry_after_s

    @property
    def server_side(self) -> bool:
        """The upstream failed (as opposed to refusing this particular request)."""
        return (
            self.kind != "status"
            or self.status is None
            or self.status >= 500
            or (self.status == 429)
        )

    @property
    def retryable(self) -> bool:
        return self.kind in ("connect", "timeout") or self.status in RETRYABLE_STATUSES


def _answer_error(status: int, raw: bytes, retry: tuple[bytes, bytes]) -> UpstreamError:
    """The error for an upstream's 4xx/5xx answer (its body and Retry-After values)."""
    try:
        body: Any = loads(raw)
    except ValueError:
        body = None
    seconds, millis = retry
    wait_s = retry_after(seconds.decode("latin-1") or None, millis.decode("latin-1") or None)
    return UpstreamError(
        "status", _error_message(body, status), status=status, body=body, retry_after_s=wait_s
    )


def _error_message(body: Any, status: int) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))[:500] or f"HTTP {status}"
    return f"HTTP {status}"


def retry_after(seconds: str | None, millis: str | None = None) -> float | None:
    """The wait an answer asks for: ``retry-after-ms`` (OpenAI's, finer) or ``Retry-After``
    (delta-seconds or an HTTP date); None when absent or unreadable."""
    if millis:
        try:
            ms = float(millis)
        except ValueError:
            ms = -1.0
        if 0 <= ms < float("inf"):
            return ms / 1000
    if not seconds:
        return None
    value = seconds.strip()
    try:
        s = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - time.time())
    return s if 0 <= s < float("inf") else None


# --- connections ---------------------------------------------------------------------------


class _Target:
    """A parsed upstream URL: where to connect and the request line's path."""

    __slots__ = ("get_head", "head", "host", "key", "port", "post_head", "scheme")

    def __init__(self, scheme: str, host: str, port: int, path: str, host_header: str) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        common = f"Host: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
        # "POST <path> HTTP/1.1\r\nHost: ...\r\n" plus the fixed headers
        self.post_head = f"POST {path} HTTP/1.1\r\n{common}".encode("latin-1")
        self.head = self.post_head + b"Content-Type: application/json\r\n"
        self.get_head = f"GET {path} HTTP/1.1\r\n{common}".encode("latin-1")
        self.key = (scheme, host, port)


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamError("connect", f"not an http(s) URL: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UpstreamError("connect", f"bad port in {url!r}") from exc
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    host = parts.hostname
    default = (parts.scheme == "http" and port == 80) or (parts.scheme == "https" and port == 443)
    host_header = f"[{host}]" if ":" in host else host
    if not default:
        host_header = f"{host_header}:{port}"
    return _Target(parts.scheme, host, port, path, host_header)


def _header_block(headers: Mapping[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            # An API key read from a file with a newline in it, most likely.
            raise ValueError(f"invalid character in the value of header {name!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


class _Closed(Exception):
    """The connection closed before a complete answer."""


class _Inflater:
    """Decodes a compressed body in bounded steps, refusing to grow past the answer limit.

    Each :meth:`feed` inflates at most ``max_out`` bytes; compressed input it did not get to
    waits in the inflater (:attr:`pending`) for the next call. A bomb (a few hundred KiB
    that inflate to gigabytes) thus costs one step of memory at a time, never its size.
    """

    def __init__(self, encoding: bytes) -> None:
        # zlib or gzip header (auto-detected) first; raw deflate if that fails at once.
        self._d = zlib.decompressobj(47)
        self._raw_tried = encoding == b"gzip"
        self._started = False
        self.size = 0
        """Bytes inflated so far."""

    @property
    def pending(self) -> bool:
        """Compressed input is waiting for the next :meth:`feed`."""
        return bool(self._d.unconsumed_tail)

    def feed(self, data: bytes, max_out: int) -> bytes:
        """Up to ``max_out`` inflated bytes of the input so far and ``data``."""
        tail = self._d.unconsumed_tail
        try:
            out = self._d.decompress(tail + data if tail else data, max_out)
        except zlib.error as exc:
            if self._raw_tried or self._started:
                raise UpstreamError("protocol", "upstream sent a corrupt body") from exc
            self._raw_tried = True
            self._d = zlib.decompressobj(-15)
            return self.feed(data, max_out)
        self._raw_tried = self._started = True
        self.size += len(out)
        if self.size > MAX_ANSWER_BYTES:
            raise UpstreamError("protocol", "upstream answer is too large once decompressed")
        return out


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to an upstream, one request at a time.

    A JSON call collects the body and completes ``waiter`` at the end of the answer. A
    stream call completes ``waiter`` at the end of the head when the status is a success,
    then queues body bytes for :class:`StreamHandle` (error answers are collected whole).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()
        self.streaming = False
        self.keep_alive = False  # read when the answer completes (the parser then resets)
        # Stream mode, after a successful head: bytes not yet read, and a wake-up for the
        # reader; an error to hand the reader when the connection failed.
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.readable: asyncio.Future[None] | None = None
        self.failure: Exception | None = None
        self.reading_paused = False

    def _reset(self) -> None:
        self.status = 0
        self.body: list[bytes] = []
        self.size = 0
        self.inflater: _Inflater | None = None
        self.encoding = b""
        self.retry_after: tuple[bytes, bytes] = (b"", b"")  # Retry-After, retry-after-ms
        self.framed = False  # Content-Length or chunked: the answer ends without a close
        self.headers_done = False
        self.complete = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None and not self.streaming:
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # A callback's own error (too large, corrupt) arrives wrapped by the parser.
            cause = exc.__context__
            self._fail(
                cause
                if isinstance(cause, UpstreamError)
                else UpstreamError("protocol", f"upstream sent invalid HTTP: {exc}")
            )
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.framed and not self.complete:
            self.on_message_complete()  # an answer delimited by the connection's close
        else:
            self._fail(_Closed())

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._reset()

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-encoding":
            self.encoding = value.strip().lower()
        elif lowered in (b"content-length", b"transfer-encoding"):
            self.framed = True
        elif lowered == b"retry-after":
            self.retry_after = (value, self.retry_after[1])
        elif lowered == b"retry-after-ms":
            self.retry_after = (self.retry_after[0], value)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        if self.encoding not in (b"", b"identity"):
            if self.encoding not in (b"gzip", b"x-gzip", b"deflate"):
                raise UpstreamError(
                    "protocol",
                    f"upstream answered in an unsupported encoding {self.encoding.decode()!r}",
                )
            # Not asked for (no Accept-Encoding is sent), but some servers compress anyway.
            self.inflater = _Inflater(self.encoding)
        if self.streaming and 200 <= self.status < 300:
            self._wake_waiter()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        inflater = self.inflater
        if self.streaming and 200 <= self.status < 300:
            if inflater is not None:
                # One step now; the rest as the reader takes it (see take), with reading
                # paused meanwhile: compressed input can't pile up behind it either.
                body = inflater.feed(body, STREAM_BUFFER_BYTES)
                if inflater.pending:
                    self._pause_reading()
            elif self.size > MAX_ANSWER_BYTES:
                raise UpstreamError("protocol", "upstream answer is too large")
            self._queue(body)
            return
        if inflater is None:
            if self.size > MAX_ANSWER_BYTES:
                raise UpstreamError("protocol", "upstream answer is too large")
            self.body.append(body)
            return
        # A whole answer: inflated in steps, so a bomb is refused at the limit with no more
        # than the limit held (each step checks it).
        self.body.append(inflater.feed(body, INFLATE_STEP_BYTES))
        while inflater.pending:
            self.body.append(inflater.feed(b"", INFLATE_STEP_BYTES))

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:
            self._reset()  # an interim answer (100 Continue): the real one follows
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake_waiter()
        self._wake_reader()

    # -- the client side

    def _wake_waiter(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_reader(self) -> None:
        readable = self.readable
        if readable is not None and not readable.done():
            readable.set_result(None)

    def _queue(self, data: bytes) -> None:
        if not data:
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > STREAM_BUFFER_BYTES:
            self._pause_reading()
        self._wake_reader()

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.reading_paused and not self.closed:
            self.transport.pause_reading()
            self.reading_paused = True

    @property
    def readable_now(self) -> bool:
        """Stream bytes can be taken: queued, or compressed and waiting to be inflated."""
        return bool(self.pending) or (self.inflater is not None and self.inflater.pending)

    def take(self) -> bytes:
        """Queued stream bytes, or the next inflated step (resuming reading once nothing
        is left); raises UpstreamError when the inflated stream passes its limit."""
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            self.pending_bytes = 0
        elif self.inflater is not None and self.inflater.pending:
            data = self.inflater.feed(b"", STREAM_BUFFER_BYTES)
        else:
            data = b""
        inflating = self.inflater is not None and self.inflater.pending
        if self.reading_paused and not inflating and self.transport is not None and not self.closed:
            self.transport.resume_reading()
            self.reading_paused = False
        return data

    def _fail(self, exc: Exception) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
            return
        if self.failure is None:
            self.failure = exc
        self._wake_reader()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def reusable(self) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and self.complete
            and self.keep_alive
        )

    def answer(self) -> bytes:
        data = b"".join(self.body)
        self.body = []
        return data


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class StreamHandle:
    """An open event stream whose status was a success; iterate :meth:`events`, then close.

    The whole-call timeout of the request covers the stream to its end.
    """

    def __init__(
        self,
        client: Upstream,
        target: _Target,
        conn: _Connection,
        deadline: float,
        timeout_s: float,
    ) -> None:
        self._client = client
        self._target = target
        self._conn = conn
        self._deadline = deadline
        self._timeout_s = timeout_s
        self._closed = False

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Parsed ``data:`` payloads up to ``[DONE]`` or the end of the body."""
        conn = self._conn
        decoder = SseDecoder()
        loop = asyncio.get_running_loop()
        try:
            while True:
                if conn.readable_now:
                    for event in self._decode(decoder, conn.take()):
                        yield event
                    if decoder.done:
                        return
                    continue
                if conn.complete:
                    for event in self._decode_tail(decoder):
                        yield event
                    return
                if isinstance(conn.failure, UpstreamError):
                    raise conn.failure  # what broke it: too large, corrupt, invalid HTTP
                if conn.failure is not None or conn.closed:
                    raise UpstreamError("connect", "stream broken: the upstream closed it")
                conn.readable = loop.create_future()
                timer = loop.call_at(self._deadline, _expire, conn.readable)
                try:
                    await conn.readable
                except TimeoutError as exc:
                    raise UpstreamError(
                        "timeout", f"stream not complete within {self._timeout_s:g}s"
                    ) from exc
                finally:
                    timer.cancel()
                    conn.readable = None
        finally:
            self.close()

    @staticmethod
    def _decode(decoder: SseDecoder, data: bytes) -> list[dict[str, Any]]:
        try:
            return decoder.feed(data)
        except SseError as exc:
            raise UpstreamError(
                "protocol", f"upstream sent an invalid event stream: {exc}"
            ) from exc

    @staticmethod
    def _decode_tail(decoder: SseDecoder) -> list[dict[str, Any]]:
        try:
            return decoder.close()
        except SseError as exc:
            raise UpstreamError(
                "protocol", f"upstream sent an invalid event stream: {exc}"
            ) from exc

    def close(self) -> None:
        """Release the connection: back to the pool when the answer was read whole."""
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        conn.streaming = False
        if conn.complete and not conn.pending:
            self._client._release(self._target, conn)
        else:
            conn.close()  # the app left mid-stream: the upstream stops generating for it


class Upstream:
    """Keep-alive connections per upstream for JSON calls and event streams.

    Each call has a whole-call timeout and a connect timeout (the call's, else the default
    given here, else none but the whole call's).
    """

    def __init__(self, *, connect_timeout_s: float | None = None) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._targets: dict[str, _Target] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._headers: dict[tuple[tuple[str, str], ...], bytes] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def create(cls, *, connect_timeout_s: float) -> Upstream:
        """A client whose calls connect within ``connect_timeout_s`` unless they say."""
        return cls(connect_timeout_s=connect_timeout_s)

    async def close(self) -> None:
        """Close every idle connection; calls in progress finish on theirs."""
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    # -- the calls

    async def post_json(
        self,
        url: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        timeout_s: float,
        connect_timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """POST and return the JSON answer; raises UpstreamError."""
        target, conn, _ = await self._send(
            url, body, headers, timeout_s, connect_timeout_s, accept=b"application/json"
        )
        return self._json_answer(target, conn)

    async def post_form(
        self,
        url: str,
        form: tuple[str, bytes],
        headers: Mapping[str, str],
        timeout_s: float,
        connect_timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """POST a form (its Content-Type and payload) and return the JSON answer; raises
        UpstreamError. The audio endpoints take multipart/form-data."""
        target, conn, _ = await self._send(
            url, None, headers, timeout_s, connect_timeout_s, accept=b"application/json",
            raw=form,
        )  # fmt: skip
        status, raw, wait = conn.status, conn.answer(), conn.retry_after
        self._release(target, conn)
        if status >= 400:
            raise _answer_error(status, raw, wait)
        try:
            data: Any = loads(raw)
        except ValueError as exc:
            raise UpstreamError("protocol", "upstream answered with invalid JSON") from exc
        if not isinstance(data, dict):
            raise UpstreamError("protocol", "upstream answered with a non-object JSON")
        return data

    async def get_json(
        self, url: str, timeout_s: float, connect_timeout_s: float | None = None
    ) -> dict[str, Any]:
        """GET and return the JSON answer (health checks, model lists); raises UpstreamError."""
        target, conn, _ = await self._send(
            url, None, {}, timeout_s, connect_timeout_s, accept=b"application/json"
        )
        return self._json_answer(target, conn)

    def _json_answer(self, target: _Target, conn: _Connection) -> dict[str, Any]:
        """The JSON object a whole answer holds, or the UpstreamError it means."""
        status, raw, wait = conn.status, conn.answer(), conn.retry_after
        self._release(target, conn)  # the answer was read whole, error or not
        if status >= 400:
            raise _answer_error(status, raw, wait)
        try:
            data: Any = loads(raw)
        except ValueError as exc:
            raise UpstreamError("protocol", "upstream answered with invalid JSON") from exc
        if not isinstance(data, dict):
            raise UpstreamError("protocol", "upstream answered with a non-object JSON")
        return data

    async def open_stream(
        self,
        url: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        timeout_s: float,
        connect_timeout_s: float | None = None,
    ) -> StreamHandle:
        """POST a streaming request; returns once the upstream answered with a success."""
        target, conn, deadline = await self._send(
            url, body, headers, timeout_s, connect_timeout_s, accept=b"text/event-stream"
        )
        if not 200 <= conn.status < 300:  # an error answer, read whole
            conn.streaming = False
            status, raw, wait = conn.status, conn.answer(), conn.retry_after
            self._release(target, conn)
            if status < 400:
                raise UpstreamError("protocol", f"upstream answered a stream with HTTP {status}")
            raise _answer_error(status, raw, wait)
        return StreamHandle(self, target, conn, deadline, timeout_s)

    async def _send(
        self,
        url: str,
        body: Mapping[str, Any] | None,
        headers: Mapping[str, str],
        timeout_s: float,
        connect_timeout_s: float | None,
        *,
        accept: bytes,
        raw: tuple[str, bytes] | None = None,
    ) -> tuple[_Target, _Connection, float]:
        """Write the request (a POST of ``body`` as JSON or of ``raw``'s content type and
        payload, a GET without either) and wait for the head (a stream: ``accept`` is an
        event stream) or the whole answer (JSON)."""
        stream = accept == b"text/event-stream"
        target = self._target(url)
        extra = self._header_block(headers)
        # One loop for the client's life (its pooled connections belong to it); looking it
        # up costs a system call (getpid) per request.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        connect_s = self.connect_timeout_s if connect_timeout_s is None else connect_timeout_s
        conn = self._take_idle(target) or await self._connect(target, timeout_s, connect_s)
        waiter = loop.create_future()
        conn.waiter = waiter
        conn.streaming = stream
        timer = loop.call_at(deadline, _expire, waiter)
        assert conn.transport is not None
        if raw is not None:
            content_type, payload = raw
            conn.transport.write(
                b"".join(
                    (target.post_head, b"Content-Type: ", content_type.encode("latin-1"),
                     b"\r\nAccept: ", accept, b"\r\n", extra, b"Content-Length: ",
                     str(len(payload)).encode(), b"\r\n\r\n", payload)
                )
            )  # fmt: skip
        elif body is None:  # a GET
            conn.transport.write(b"".join((target.get_head, b"Accept: ", accept, b"\r\n\r\n")))
        else:
            payload = dumps(body)
            conn.transport.write(
                b"".join(
                    (target.head, b"Accept: ", accept, b"\r\n", extra,
                     b"Content-Length: ", str(len(payload)).encode(), b"\r\n\r\n", payload)
                )
            )  # fmt: skip
        try:
            await waiter
        except TimeoutError as exc:
            conn.close()
            what = "complete answer" if conn.headers_done else "answer"
            raise UpstreamError("timeout", f"no {what} within {timeout_s:g}s") from exc
        except _Closed as exc:
            raise UpstreamError(
                "connect", "the upstream closed the connection before answering"
            ) from exc
        except asyncio.CancelledError:
            conn.close()  # a half-read answer would be taken for the next request's
            raise
        except UpstreamError:
            conn.close()
            raise
        finally:
            timer.cancel()
            conn.waiter = None
        return target, conn, deadline

    # -- the pool

    def _target(self, url: str) -> _Target:
        found = self._targets.get(url)
        if found is None:
            found = _parse_url(url)
            if len(self._targets) > MAX_CACHED_TARGETS:
                self._targets.clear()
            self._targets[url] = found
        return found

    def _header_block(self, headers: Mapping[str, str]) -> bytes:
        if not headers:
            return b""
        key = tuple(headers.items())
        found = self._headers.get(key)
        if found is None:
            found = _header_block(headers)
            if len(self._headers) > MAX_CACHED_HEADER_BLOCKS:  # keys rotate rarely
                self._headers.clear()
            self._headers[key] = found
        return found

    async def _connect(
        self, target: _Target, timeout_s: float, connect_timeout_s: float | None
    ) -> _Connection:
        loop = asyncio.get_running_loop()
        ssl_context: ssl.SSLContext | None = None
        if target.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ssl_context = self._ssl
        # The connect limit (name lookup, TCP and TLS handshakes) applies when it is the
        # tighter one: a peer that never accepts then fails as unreachable, and the caller
        # tries elsewhere instead of waiting out the whole request's time.
        connect_bound = connect_timeout_s is not None and connect_timeout_s < timeout_s
        limit = connect_timeout_s if connect_bound and connect_timeout_s else timeout_s
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(
                    _Connection,
                    target.host,
                    target.port,
                    ssl=ssl_context,
                    server_hostname=target.host if ssl_context else None,
                )
        except TimeoutError as exc:
            if connect_bound:
                raise UpstreamError("connect", f"no connection within {limit:g}s") from exc
            raise UpstreamError("timeout", f"no answer within {timeout_s:g}s") from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS verification
            raise UpstreamError("connect", f"cannot connect: {type(exc).__name__}") from exc
        return conn

    def _take_idle(self, target: _Target) -> _Connection | None:
        idle = self._idle.get(target.key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.reusable() and now - conn.idle_since < IDLE_CONNECTION_S:
                return conn
            conn.close()
        return None

    def _release(self, target: _Target, conn: _Connection) -> None:
        idle = self._idle.setdefault(target.key, [])
        if self._closed or not conn.reusable() or len(idle) >= MAX_IDLE_PER_UPSTREAM:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)


def backoff_delay(attempt: int) -> float:
    """Delay before retry ``attempt`` (1-based): exponential with full jitter."""
    return random.uniform(0, min(BACKOFF_BASE_S * 2 ** (attempt - 1), BACKOFF_MAX_S))
