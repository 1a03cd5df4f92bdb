"""The sidecar's own HTTP/1.1 server over real loopback sockets: keep-alive, pipelining,
bodies in chunks, limits, streaming with backpressure, and the answers it gives by itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from clawdbot_sidecar.fronts.http import (
    HttpServer,
    Refusals,
    Request,
    Response,
    StreamingResponse,
)

LIMIT = 1024


def _error(status: int, message: str) -> Response:
    return Response(status, json.dumps({"error": {"message": message}}).encode())


class App:
    """Echoes requests as JSON; /stream streams; /slow waits for a release; /boom fails."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.stream_closed = asyncio.Event()
        self.seen: list[str] = []

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        self.seen.append(request.path)
        if request.path == "/slow":
            await self.release.wait()
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        if request.path == "/stream":
            count = int(request.query.partition("=")[2] or 3)
            return StreamingResponse(200, self._chunks(count), headers=[("x-kind", "sse")])
        body = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "body": request.body.decode(),
        }
        return Response(200, json.dumps(body).encode(), headers=[("x-echo", "1")])

    async def _chunks(self, count: int) -> AsyncIterator[bytes]:
        try:
            for i in range(count):
                yield f"data: {i}\n\n".encode()
                await asyncio.sleep(0)
        finally:
            self.stream_closed.set()


@pytest.fixture
async def served() -> AsyncIterator[tuple[App, int]]:
    app = App()
    server = HttpServer(
        app,
        max_body_bytes=lambda: LIMIT,
        refusals=Refusals(
            too_large=lambda limit: _error(413, f"over {limit}"),
            error=_error,
            internal_error=lambda: _error(500, "internal"),
        ),
    )
    await server.start("127.0.0.1", 0)
    try:
        yield app, server.port
    finally:
        app.release.set()
        await server.close(grace_s=1.0)


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, lower-cased headers, body (Content-Length or chunked)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, headers, body
            body += chunk[:-2]
    length = int(headers.get("content-length", "0"))
    return status, headers, await reader.readexactly(length)


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(
    served: tuple[App, int],
) -> None:
    _, port = served
    async with connect(port) as (reader, writer):
        # Three requests in one write; the first waits on nothing, answers keep their order.
        writer.write(post("/a", b"one") + post("/b?x=1", b"two") + b"GET /c HTTP/1.1\r\n\r\n")
        answers = [await read_response(reader) for _ in range(3)]
        assert [json.loads(b)["path"] for _, _, b in answers] == ["/a", "/b", "/c"]
        assert json.loads(answers[1][2])["query"] == "x=1"
        assert json.loads(answers[1][2])["body"] == "two"
        status, headers, _ = answers[0]
        assert status == 200 and headers["x-echo"] == "1" and "date" in headers
        assert headers["content-type"] == "application/json; charset=utf-8"
        # The connection is still open for more.
        writer.write(post("/d", b""))
        assert json.loads((await read_response(reader))[2])["path"] == "/d"


async def test_a_slow_request_holds_back_the_answers_pipelined_after_it(
    served: tuple[App, int],
) -> None:
    app, port = served
    async with connect(port) as (reader, writer):
        writer.write(b"GET /slow HTTP/1.1\r\n\r\nGET /fast HTTP/1.1\r\n\r\n")
        read = asyncio.ensure_future(read_response(reader))
        for _ in range(50):  # bounded: until both requests were parsed and the first started
            if app.seen == ["/slow"]:
                break
            await asyncio.sleep(0.01)
        assert not read.done()
        app.release.set()
        assert json.loads((await read)[2])["path"] == "/slow"
        assert json.loads((await read_response(reader))[2])["path"] == "/fast"


async def test_headers_are_lower_cased_and_percent_paths_decoded(served: tuple[App, int]) -> None:
    _, port = served
    async with connect(port) as (reader, writer):
        writer.write(b"GET /v1/a%20b HTTP/1.1\r\nX-Tenant: Team-A\r\nHost: x\r\n\r\n")
        echo = json.loads((await read_response(reader))[2])
        assert echo["path"] == "/v1/a b"
        assert echo["headers"]["x-tenant"] == "Team-A"


async def test_chunked_request_body(served: tuple[App, int]) -> None:
    _, port = served
    async with connect(port) as (reader, writer):
        writer.write(
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        assert json.loads((await read_response(reader))[2])["body"] == "hello world"


async def test_body_over_the_limit_gets_413_and_the_connection_closes(
    served: tuple[App, int],
) -> None:
    app, port = served
    async with connect(port) as (reader, writer):
        writer.write(post("/big", b"x" * (LIMIT + 1)) + post("/after", b""))
        status, headers, body = await read_response(reader)
        assert status == 413 and json.loads(body)["error"]["message"] == f"over {LIMIT}"
        assert headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed; /after not served
    assert app.seen == []


async def test_chunked_body_over_the_limit_is_refused_while_it_arrives(
    served: tuple[App, int],
) -> None:
    app, port = served
    async with connect(port) as (reader, writer):
        writer.write(b"POST /big HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            writer.write(b"200\r\n" + b"y" * 512 + b"\r\n")
        status, _, _ = await read_response(reader)
        assert status == 413
    assert app.seen == []


async def test_expect_100_continue(served: tuple[App, int]) -> None:
    _, port = served
    async with connect(port) as (reader, writer):
        writer.write(b"POST /e HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.write(b"ok")
        assert json.loads((await read_response(reader))[2])["body"] == "ok"
        # Over the limit: refused at once, without asking for the body.
        writer.write(
            f"POST /e HTTP/1.1\r\nContent-Length: {LIMIT + 1}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        assert (await read_response(reader))[0] == 413


async def test_malformed_request_gets_400_and_close(served: tuple[App, int]) -> None:
    _, port = served
    async with connect(port) as (reader, writer):
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 400 and headers["connection"] == "close"
        assert "malformed HTTP request" in json.loads(body)["error"]["message"]


async def test_oversized_headers_get_431(served: tuple[App, int]) -> None:
    _, port = served
    async with connect(port) as (reader, writer):
        writer.write(b"GET /h HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        assert (await read_response(reader))[0] == 431


async def test_handler_failure_is_a_500_and_the_connection_goes_on(
    served: tuple[App, int],
) -> None:
    _, port = served
    async with connect(port) as (reader, writer):
        writer.write(b"GET /boom HTTP/1.1\r\n\r\nGET /ok HTTP/1.1\r\n\r\n")
        assert (await read_response(reader))[0] == 500
        assert json.loads((await read_response(reader))[2])["path"] == "/ok"


async def test_head_sends_the_headers_only(served: tuple[App, int]) -> None:
    _, port = served
    async with connect(port) as (reader, writer):
        writer.write(b"HEAD /h HTTP/1.1\r\n\r\nGET /after HTTP/1.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: " in head
        # No body follows: the next bytes are the next answer.
        assert json.loads((await read_response(reader))[2])["path"] == "/after"


async def test_http10_and_connection_close_end_the_connection(served: tuple[App, int]) -> None:
    _, port = served
    for request in (
        b"GET /a HTTP/1.0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /stream?n=2 HTTP/1.0\r\n\r\n",
    ):
        async with connect(port) as (reader, writer):
            writer.write(request)
            data = await asyncio.wait_for(reader.read(), 5)  # until the server closes
            assert data.startswith(b"HTTP/1.1 200 OK")
            assert b"connection: close" in data
            if b"stream" in request:  # HTTP/1.0 gets the stream unchunked
                assert b"transfer-encoding" not in data and data.endswith(b"data: 1\n\n")


async def test_an_upgrade_offer_is_ignored(served: tuple[App, int]) -> None:
    _, port = served
    async with connect(port) as (reader, writer):
        writer.write(
            b"GET /u HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nGET /v HTTP/1.1\r\n\r\n"
        )
        assert json.loads((await read_response(reader))[2])["path"] == "/u"
        assert json.loads((await read_response(reader))[2])["path"] == "/v"


async def test_stream_is_chunked_and_the_connection_kept(served: tuple[App, int]) -> None:
    app, port = served
    async with connect(port) as (reader, writer):
        writer.write(b"GET /stream?n=3 HTTP/1.1\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["content-type"] == "text/event-stream"
        assert headers["x-kind"] == "sse" and headers["cache-control"] == "no-cache"
        assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert app.stream_closed.is_set()
        writer.write(b"GET /again HTTP/1.1\r\n\r\n")
        assert json.loads((await read_response(reader))[2])["path"] == "/again"


async def test_a_client_leaving_mid_stream_closes_the_producer(served: tuple[App, int]) -> None:
    app, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Many chunks and a reader that stops reading: backpressure, then a reset.
    writer.write(b"GET /stream?n=100000 HTTP/1.1\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.abort()
    await asyncio.wait_for(app.stream_closed.wait(), 5)


async def test_close_waits_for_answers_in_progress() -> None:
    app = App()
    refusals = Refusals(
        too_large=lambda limit: _error(413, ""),
        error=_error,
        internal_error=lambda: _error(500, ""),
    )
    server = HttpServer(app, max_body_bytes=lambda: LIMIT, refusals=refusals)
    await server.start("127.0.0.1", 0)
    port = server.port
    async with connect(port) as (reader, writer):
        writer.write(b"GET /slow HTTP/1.1\r\n\r\n")
        for _ in range(50):  # bounded: until the request is being handled
            if app.seen:
                break
            await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(server.close(grace_s=5.0))
        await asyncio.sleep(0.05)
        assert not closing.done()
        app.release.set()
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers["connection"] == "close"  # no keep-alive when closing
        await asyncio.wait_for(closing, 5)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
