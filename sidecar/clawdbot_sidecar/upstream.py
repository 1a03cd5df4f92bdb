"""HTTP calls to OpenAI-compatible upstreams (local model servers and the cloud).

Both kinds speak the same protocol, so one client serves both. A streamed call returns only
once the upstream has answered with its status line: until then nothing has been sent to the
app, and the caller can still fall back to another target.

Non-streamed JSON calls, the bulk of the traffic, go through a small keep-alive HTTP/1.1
client of this module (a pool of idle connections per upstream, one request per connection
at a time, a pre-built header block, the C parser of ``httptools`` for the answer): a general
client builds request and response objects, header multidicts and trace hooks on every call,
which cost more CPU than all of the sidecar's routing and redaction together. Streamed calls
keep aiohttp's client, whose SSE line reader they use.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
import httptools
import orjson

# Statuses worth another try at the same upstream (rate limited, overloaded, restarting).
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
BACKOFF_BASE_S = 0.2
BACKOFF_MAX_S = 5.0
# SSE lines from a well-behaved server are small; a bigger line is a broken upstream.
MAX_SSE_LINE_BYTES = 1 << 20
# An idle pooled connection older than this is closed rather than reused: servers close
# theirs after 5-75 s, and a request written into a connection the server is closing fails.
IDLE_CONNECTION_S = 15.0
# Idle connections kept per upstream; more only while a burst lasts.
MAX_IDLE_PER_UPSTREAM = 256
# An answer larger than this is a broken upstream (OpenAI answers are kilobytes).
MAX_ANSWER_BYTES = 64 * 1024 * 1024
USER_AGENT = "clawdbot-sidecar"


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


def loads(data: bytes | str) -> Any:
    """Parse JSON with orjson; what only the standard library accepts (NaN, integers beyond
    64 bits) still parses, through it."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any) -> bytes:
    """Serialize JSON with orjson (UTF-8, compact); integers beyond 64 bits through the
    standard library, which orjson refuses."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()


@dataclass
class StreamHandle:
    """An open SSE stream whose status was 200; iterate :meth:`events`, then close."""

    response: aiohttp.ClientResponse

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Parsed ``data:`` payloads up to ``[DONE]`` or the end of the body."""
        try:
            async for raw in self.response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # comments, event names, keep-alives
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    event = loads(data)
                except ValueError as exc:
                    raise UpstreamError("protocol", "upstream sent an invalid SSE event") from exc
                if isinstance(event, dict):
                    yield event
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError("connect", f"stream broken: {type(exc).__name__}") from exc
        finally:
            self.close()

    def close(self) -> None:
        self.response.release()


def _status_error(status: int, body: Any, retry_after_s: float | None) -> UpstreamError:
    """The error for an upstream's 4xx/5xx answer, whichever client read it."""
    return UpstreamError(
        "status", _error_message(body, status), status=status, body=body,
        retry_after_s=retry_after_s,
    )  # fmt: skip


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


# --- the keep-alive client for JSON calls ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """A parsed upstream URL: where to connect and the request line's path."""

    scheme: str
    host: str
    port: int
    head: bytes  # "POST <path> HTTP/1.1\r\nHost: ...\r\n" plus the fixed headers

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


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
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Accept: application/json\r\nContent-Type: application/json\r\n"
    )
    return _Target(parts.scheme, host, port, head.encode("latin-1"))


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


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to an upstream, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.idle_since = 0.0
        self.status = 0
        self.body: list[bytes] = []
        self.size = 0
        self.encoding = b""
        self.retry_after: tuple[bytes, bytes] = (b"", b"")  # Retry-After, retry-after-ms
        self.framed = False  # Content-Length or chunked: the answer ends without a close
        self.headers_done = False
        self.complete = False
        self.keep_alive = False  # read when the answer completes (the parser then resets)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("protocol", f"upstream sent invalid HTTP: {exc}"))
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
        self.status = 0
        self.body = []
        self.size = 0
        self.encoding = b""
        self.retry_after = (b"", b"")
        self.framed = False
        self.headers_done = False
        self.complete = False

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

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_ANSWER_BYTES:
            self._fail(UpstreamError("protocol", "upstream answer is too large"))
            self.close()
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:
            self.on_message_begin()  # an interim answer (100 Continue): the real one follows
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the client side

    def _fail(self, exc: Exception) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

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
        if self.encoding in (b"", b"identity"):
            return data
        if self.encoding in (b"gzip", b"x-gzip", b"deflate"):
            # Not asked for (no Accept-Encoding is sent), but some servers compress anyway.
            try:
                return zlib.decompress(data, 47)  # zlib or gzip header, detected
            except zlib.error:
                try:
                    return zlib.decompress(data, -15)  # raw deflate
                except zlib.error as exc:
                    raise UpstreamError("protocol", "upstream sent a corrupt body") from exc
        raise UpstreamError(
            "protocol", f"upstream answered in an unsupported encoding {self.encoding.decode()!r}"
        )


class _JsonClient:
    """Keep-alive connections per upstream for JSON POSTs."""

    def __init__(self) -> None:
        self._targets: dict[str, _Target] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._headers: dict[tuple[tuple[str, str], ...], bytes] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def target(self, url: str) -> _Target:
        found = self._targets.get(url)
        if found is None:
            found = _parse_url(url)
            if len(self._targets) > 1024:  # URLs come from config: a handful in practice
                self._targets.clear()
            self._targets[url] = found
        return found

    def header_block(self, headers: Mapping[str, str]) -> bytes:
        if not headers:
            return b""
        key = tuple(headers.items())
        found = self._headers.get(key)
        if found is None:
            found = _header_block(headers)
            if len(self._headers) > 64:  # keys rotate rarely; never grow without bound
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

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout_s: float,
        connect_timeout_s: float | None = None,
    ) -> tuple[int, bytes, tuple[bytes, bytes]]:
        """POST ``body`` (JSON); returns the answer's status, (decoded) body and its
        ``Retry-After`` and ``retry-after-ms`` values (empty when absent)."""
        target = self.target(url)
        extra = self.header_block(headers)
        # One loop for the client's life (its pooled connections belong to it); looking it
        # up costs a system call (getpid) per request.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conn = self._take_idle(target) or await self._connect(target, timeout_s, connect_timeout_s)
        waiter = loop.create_future()
        conn.waiter = waiter
        timer = loop.call_at(deadline, _expire, waiter)
        assert conn.transport is not None
        conn.transport.write(
            b"".join(
                (target.head, extra, b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n")
            )
            + body
        )
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
        finally:
            timer.cancel()
            conn.waiter = None
        status = conn.status
        data = conn.answer()
        self._release(target, conn)
        return status, data, conn.retry_after

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Upstream:
    """The clients for all upstream calls (connections reused per host).

    Each call has a whole-call timeout and a connect timeout (the call's, else the
    default given here, else none but the whole call's).
    """

    def __init__(
        self, session: aiohttp.ClientSession, *, connect_timeout_s: float | None = None
    ) -> None:
        self._session = session
        self._json = _JsonClient()
        self.connect_timeout_s = connect_timeout_s

    @classmethod
    def create(cls, *, connect_timeout_s: float, max_connections: int = 512) -> Upstream:
        connector = aiohttp.TCPConnector(limit=max_connections, enable_cleanup_closed=True)
        session = aiohttp.ClientSession(connector=connector)
        return cls(session, connect_timeout_s=connect_timeout_s)

    async def close(self) -> None:
        self._json.close()
        await self._session.close()

    async def _post(
        self,
        url: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        timeout_s: float,
        connect_timeout_s: float | None,
    ) -> aiohttp.ClientResponse:
        connect_s = self.connect_timeout_s if connect_timeout_s is None else connect_timeout_s
        try:
            resp = await self._session.post(
                url,
                data=dumps(body),
                headers={**headers, "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_s),
            )
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
            raise UpstreamError("connect", f"cannot connect: {type(exc).__name__}") from exc
        except aiohttp.ConnectionTimeoutError as exc:  # before TimeoutError, its base
            raise UpstreamError("connect", f"no connection within {connect_s:g}s") from exc
        except TimeoutError as exc:
            raise UpstreamError("timeout", f"no answer within {timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("connect", f"request failed: {type(exc).__name__}") from exc
        if resp.status >= 400:
            try:
                err_body: Any = loads(await resp.read())
            except (TimeoutError, ValueError, aiohttp.ClientError):
                err_body = None
            finally:
                resp.release()
            headers_in = resp.headers
            wait_s = retry_after(headers_in.get("Retry-After"), headers_in.get("retry-after-ms"))
            raise _status_error(resp.status, err_body, wait_s)
        return resp

    async def post_json(
        self,
        url: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        timeout_s: float,
        connect_timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """POST and return the JSON answer; raises UpstreamError."""
        status, raw, (seconds, millis) = await self._json.post(
            url,
            dumps(body),
            headers,
            timeout_s,
            self.connect_timeout_s if connect_timeout_s is None else connect_timeout_s,
        )
        if status >= 400:
            try:
                err_body: Any = loads(raw)
            except ValueError:
                err_body = None
            wait_s = retry_after(
                seconds.decode("latin-1") or None, millis.decode("latin-1") or None
            )
            raise _status_error(status, err_body, wait_s)
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
        """POST a streaming request; returns once the upstream answered 200."""
        resp = await self._post(url, body, headers, timeout_s, connect_timeout_s)
        return StreamHandle(resp)


def backoff_delay(attempt: int) -> float:
    """Delay before retry ``attempt`` (1-based): exponential with full jitter."""
    return random.uniform(0, min(BACKOFF_BASE_S * 2 ** (attempt - 1), BACKOFF_MAX_S))
