"""The sidecar's HTTP/1.1 server against hostile clients, over real loopback sockets: no
request parsed out of a body (Upgrade, CONNECT), trailers kept out of the headers, bounded
heads, a bounded write buffer for a client that never reads, slow-loris deadlines, and a
bounded number of connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from clawdbot_sidecar.fronts.http import (
    MAX_HEADERS,
    MAX_PIPELINED,
    PARSE_SLICE_BYTES,
    SLOW_HEAD_S,
    HttpServer,
    Refusals,
    Request,
    Response,
    StreamingResponse,
)

LIMIT = 64 * 1024
ANSWER_BYTES = 2048
# Short deadlines so the tests wait fractions of a second, not the production values.
HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 0.5
WRITE_TIMEOUT_S = 0.5
# A bound on every wait below, so a regression fails instead of hanging.
WAIT_S = 5.0


def _error(status: int, message: str) -> Response:
    return Response(status, json.dumps({"error": {"message": message}}).encode())


class App:
    """Records every request it is handed; /slow waits for a release; /stream streams."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.release = asyncio.Event()
        self.stream_closed = asyncio.Event()

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        self.requests.append(request)
        if request.path == "/slow":
            await self.release.wait()
        if request.path == "/stream":
            return StreamingResponse(200, self._chunks())
        if request.path == "/p":  # the size of a sidecar's error answer with its headers
            return Response(200, b"p" * ANSWER_BYTES)
        body = {"path": request.path, "headers": request.headers, "body": request.body.decode()}
        return Response(200, json.dumps(body).encode())

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            for _ in range(100_000):  # bounded; far more than any socket buffer holds
                yield b"x" * 4096
                await asyncio.sleep(0)
        finally:
            self.stream_closed.set()

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


Serve = Callable[..., contextlib.AbstractAsyncContextManager[tuple[App, HttpServer]]]


@contextlib.asynccontextmanager
async def serve_server(**limits: Any) -> AsyncIterator[tuple[App, HttpServer]]:
    """A server for a fresh App on a free loopback port, with the tests' short deadlines
    unless ``limits`` says otherwise."""
    app = App()
    options: dict[str, Any] = {
        "header_timeout_s": HEADER_TIMEOUT_S,
        "body_timeout_s": BODY_TIMEOUT_S,
        "write_timeout_s": WRITE_TIMEOUT_S,
        **limits,
    }
    server = HttpServer(
        app,
        max_body_bytes=lambda: LIMIT,
        refusals=Refusals(
            too_large=lambda limit: _error(413, f"over {limit}"),
            error=_error,
            internal_error=lambda: _error(500, "internal"),
        ),
        **options,
    )
    await server.start("127.0.0.1", 0)
    try:
        yield app, server
    finally:
        app.release.set()
        await server.close(grace_s=1.0)


@pytest.fixture
def serve() -> Serve:
    """``async with serve(**limits) as (app, server)``."""
    return serve_server


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
    """One Content-Length response: status, lower-cased headers, body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection (EOF or reset) within WAIT_S."""
    try:
        while await asyncio.wait_for(reader.read(65536), WAIT_S):
            pass
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return True


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "body-apart"])
async def test_an_upgrade_requests_body_is_its_body_never_a_request(
    serve: Serve, split: bool
) -> None:
    async with serve() as (app, server), connect(server.port) as (reader, writer):
        head = (
            b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Content-Length: %d\r\n\r\n" % len(SMUGGLED)
        )
        if split:  # the body arrives in pieces after the head
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(0.05)
            for i in range(0, len(SMUGGLED), 7):
                writer.write(SMUGGLED[i : i + 7])
                await writer.drain()
            writer.write(b"GET /next HTTP/1.1\r\n\r\n")
        else:
            writer.write(head + SMUGGLED + b"GET /next HTTP/1.1\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 200 and json.loads(body)["body"] == SMUGGLED.decode()
        # The connection goes on with the request after the body, parsed as a request.
        assert json.loads((await read_response(reader))[2])["path"] == "/next"
    assert app.paths == ["/up", "/next"]


async def test_an_upgrade_request_with_a_chunked_body_is_refused(serve: Serve) -> None:
    async with serve() as (app, server), connect(server.port) as (reader, writer):
        chunk = b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
        writer.write(
            b"POST /up HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk
        )
        status, headers, body = await read_response(reader)
        assert status == 400 and headers["connection"] == "close"
        assert "Upgrade" in json.loads(body)["error"]["message"]
        assert await closed_by_server(reader)
    assert app.requests == []


async def test_connect_is_refused_and_what_follows_is_never_parsed(serve: Serve) -> None:
    async with serve() as (app, server), connect(server.port) as (reader, writer):
        writer.write(
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" + SMUGGLED
        )
        status, headers, body = await read_response(reader)
        assert status == 405 and headers["connection"] == "close"
        assert "CONNECT is not supported" in json.loads(body)["error"]["message"]
        assert await closed_by_server(reader)
    assert app.requests == []


async def test_a_bodyless_upgrade_offer_is_answered_as_a_plain_request(serve: Serve) -> None:
    async with serve() as (app, server), connect(server.port) as (reader, writer):
        writer.write(
            b"GET /u HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nGET /v HTTP/1.1\r\n\r\n"
        )
        assert (await read_response(reader))[0] == 200
        assert (await read_response(reader))[0] == 200
    assert app.paths == ["/u", "/v"]


async def test_thousands_of_pipelined_upgrade_offers_are_each_answered(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    offers = 5000  # each hands the rest of the read to a fresh parser
    async with serve() as (app, server), connect(server.port) as (reader, writer):
        writer.write(b"GET /u HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n" * offers)
        for _ in range(offers):
            assert (await read_response(reader))[0] == 200
    assert len(app.requests) == offers
    # asyncio logs a protocol callback that raised ("Fatal error: protocol.data_received()").
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR and "protocol" in r.msg]
    assert not failed, [r.getMessage() for r in failed]


async def test_chunked_trailers_never_touch_the_request_headers(serve: Serve) -> None:
    async with serve() as (_app, server), connect(server.port) as (reader, writer):
        writer.write(
            b"POST /t HTTP/1.1\r\nHost: x\r\nX-Tenant: team-a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nhi\r\n0\r\nX-Tenant: evil\r\nContent-Type: text/evil\r\nX-New: 1\r\n\r\n"
        )
        echo = json.loads((await read_response(reader))[2])
    assert echo["body"] == "hi"
    assert echo["headers"]["x-tenant"] == "team-a"
    assert "content-type" not in echo["headers"] and "x-new" not in echo["headers"]


async def test_a_flood_of_trailers_is_bounded_like_a_head(serve: Serve) -> None:
    async with serve() as (app, server), connect(server.port) as (reader, writer):
        trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 100) for i in range(1000))
        writer.write(
            b"POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n"
            + trailers
            + b"\r\n"
        )
        assert (await read_response(reader))[0] == 431
    assert app.requests == []


async def test_more_header_fields_than_the_limit_get_431(serve: Serve) -> None:
    async with serve() as (app, server), connect(server.port) as (reader, writer):
        # Small fields, so the byte limit is not what refuses them.
        fields = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1))
        writer.write(b"GET /h HTTP/1.1\r\n" + fields + b"\r\n")
        status, _, body = await read_response(reader)
        assert status == 431 and str(MAX_HEADERS) in json.loads(body)["error"]["message"]
    assert app.requests == []
    # At the limit, the request is served.
    async with serve() as (app, server), connect(server.port) as (reader, writer):
        fields = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS))
        writer.write(b"GET /h HTTP/1.1\r\n" + fields + b"\r\n")
        assert (await read_response(reader))[0] == 200


PIPELINED = 20_000
# What the server may buffer for a client that does not read: the transport's high-water
# mark (64 KiB in asyncio and uvloop) plus one answer, with room to spare. Without flow
# control, 20,000 answers of 2 KiB pile up: 42 MB beyond what the kernel's buffers take.
MAX_BUFFERED_BYTES = 512 * 1024


async def test_a_client_that_never_reads_cannot_grow_the_write_buffer(serve: Serve) -> None:
    # The client pauses longer than the test's short write timeout: a production value.
    async with serve(write_timeout_s=WAIT_S * 2) as (app, server):
        client = socket.socket()
        # Small buffers on the client's side, so the kernel holds little of the backlog.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", server.port))
        client.setblocking(False)
        payload = b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n" * PIPELINED
        sent, peak, stalled_since = 0, 0, time.monotonic()
        try:
            # Bounded: ends when all is sent or the server stopped reading for 0.5 s.
            while sent < len(payload) and time.monotonic() - stalled_since < 0.5:
                try:
                    n = client.send(payload[sent : sent + 65536])
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                else:
                    sent += n
                    stalled_since = time.monotonic()
                    await asyncio.sleep(0)
                for conn in server.connections:
                    assert conn.transport is not None
                    peak = max(peak, conn.transport.get_write_buffer_size())
            assert peak <= MAX_BUFFERED_BYTES, f"{peak} bytes buffered for a non-reader"
            # The server stopped taking requests it could not answer.
            assert len(app.requests) < PIPELINED
            # Reading again, the client gets an answer to every request, in order.
            loop = asyncio.get_running_loop()
            answers, _ = await asyncio.gather(
                _count_answers(client, PIPELINED),
                asyncio.wait_for(loop.sock_sendall(client, payload[sent:]), WAIT_S * 4),
            )
            assert answers == PIPELINED
            assert app.paths == ["/p"] * PIPELINED
        finally:
            client.close()


async def _count_answers(client: socket.socket, expected: int) -> int:
    """Status lines read from ``client`` until ``expected`` came (or WAIT_S of silence)."""
    loop = asyncio.get_running_loop()
    status = b"HTTP/1.1 200 OK"
    seen, tail = 0, b""
    while seen < expected:
        data = await asyncio.wait_for(loop.sock_recv(client, 1 << 20), WAIT_S)
        if not data:
            break
        # The tail is too short to hold a whole status line: each is counted once, also
        # one split across two reads.
        seen += (tail + data).count(status)
        tail = (tail + data)[-(len(status) - 1) :]
    return seen


async def test_one_read_of_thousands_of_tiny_requests_is_parsed_as_answers_make_room(
    serve: Serve,
) -> None:
    tiny = b"GET /t HTTP/1.1\r\n\r\n"
    count = 10_000  # 190 KB: one or two reads
    async with serve() as (app, server), connect(server.port) as (reader, writer):
        writer.write(b"GET /slow HTTP/1.1\r\n\r\n" + tiny * count)
        await writer.drain()
        await asyncio.sleep(0.2)  # the server has read what it will while /slow waits
        (conn,) = server.connections
        # One parse slice of tiny requests at most, not the whole read (10,000 requests,
        # each a few hundred bytes of objects).
        assert len(conn.queue) <= MAX_PIPELINED + PARSE_SLICE_BYTES // len(tiny)
        app.release.set()
        for _ in range(count + 1):  # and every one is answered, in order
            assert (await read_response(reader))[0] == 200
    assert app.paths == ["/slow"] + ["/t"] * count


async def test_queued_bodies_are_bounded_by_the_body_limit_not_by_their_count(
    serve: Serve,
) -> None:
    body = b"b" * (LIMIT - 1024)  # each just under the limit
    count = 40
    async with serve() as (app, server), connect(server.port) as (reader, writer):
        writer.write(b"GET /slow HTTP/1.1\r\n\r\n")
        for i in range(count):
            writer.write(
                b"POST /b%d HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (i, len(body)) + body
            )
        await asyncio.sleep(0.2)  # the server has read what it will while /slow waits
        (conn,) = server.connections
        queued = sum(len(p.request.body) for p in conn.queue if p.request is not None)
        # A body limit's worth waits, plus the one that crossed it (16 would be 15 limits).
        assert queued <= 2 * LIMIT, f"{queued} body bytes queued"
        app.release.set()
        for _ in range(count + 1):
            assert (await read_response(reader))[0] == 200
    assert app.paths == ["/slow"] + [f"/b{i}" for i in range(count)]


async def test_slow_loris_headers_are_cut_off_by_the_header_timeout(serve: Serve) -> None:
    async with serve() as (app, server):
        async with connect(server.port) as (reader, writer):
            started = time.monotonic()
            head = b"GET /loris HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1000
            answer = asyncio.ensure_future(reader.read())  # all until the server closes
            for byte in head:  # bounded: one byte per 50 ms, the head never completes
                if answer.done():
                    break
                with contextlib.suppress(ConnectionError):
                    writer.write(bytes([byte]))
                await asyncio.sleep(0.05)
            answer_bytes = await asyncio.wait_for(answer, WAIT_S)
            elapsed = time.monotonic() - started
        assert answer_bytes.startswith(b"HTTP/1.1 408"), answer_bytes[:80]
        # Cut off within the deadline plus one sweep, not after the whole head trickled in.
        assert elapsed < HEADER_TIMEOUT_S * 2 + 1.0
        # Other clients were served meanwhile, and after.
        async with connect(server.port) as (reader, writer):
            writer.write(b"GET /ok HTTP/1.1\r\n\r\n")
            assert (await read_response(reader))[0] == 200
    assert app.paths == ["/ok"]


async def test_a_body_that_does_not_arrive_is_cut_off_by_the_body_timeout(serve: Serve) -> None:
    async with serve() as (app, server), connect(server.port) as (reader, writer):
        writer.write(b"POST /b HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly-some")
        status, headers, body = await read_response(reader)
        assert status == 408 and headers["connection"] == "close"
        assert "body" in json.loads(body)["error"]["message"]
    assert app.requests == []


async def test_a_client_that_stops_reading_a_stream_is_cut_off(serve: Serve) -> None:
    async with serve() as (app, server):
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", server.port))
        try:
            client.sendall(b"GET /stream HTTP/1.1\r\n\r\n")
            # Never reads: the producer is closed once the write timeout has passed.
            await asyncio.wait_for(app.stream_closed.wait(), WRITE_TIMEOUT_S + WAIT_S)
            for _ in range(50):  # bounded: until the connection is gone from the server
                if not server.connections:
                    break
                await asyncio.sleep(0.05)
            assert not server.connections
        finally:
            client.close()


async def test_connections_are_bounded_the_longest_idle_makes_room(serve: Serve) -> None:
    async with serve(max_connections=8) as (_app, server), contextlib.AsyncExitStack() as stack:
        idle = [await stack.enter_async_context(connect(server.port)) for _ in range(8)]
        for i, (reader, writer) in enumerate(idle):  # each used once, oldest first
            writer.write(b"GET /i%d HTTP/1.1\r\n\r\n" % i)
            assert (await read_response(reader))[0] == 200
            await asyncio.sleep(0.01)  # uvloop's clock ticks in milliseconds
        reader, writer = await stack.enter_async_context(connect(server.port))
        writer.write(b"GET /new HTTP/1.1\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        assert await closed_by_server(idle[0][0])  # the longest idle was closed for it
        assert len(server.connections) <= 8
        assert server.refused_connections == 0


async def test_when_every_connection_is_busy_a_new_one_is_refused(serve: Serve) -> None:
    async with serve(max_connections=4) as (app, server), contextlib.AsyncExitStack() as stack:
        busy = [await stack.enter_async_context(connect(server.port)) for _ in range(4)]
        for _, writer in busy:
            writer.write(b"GET /slow HTTP/1.1\r\n\r\n")
        for _ in range(100):  # bounded: until the four are being answered
            if len(app.requests) == 4:
                break
            await asyncio.sleep(0.01)
        reader, _ = await stack.enter_async_context(connect(server.port))
        assert await closed_by_server(reader)
        assert server.refused_connections == 1
        app.release.set()
        for reader, _ in busy:  # the busy ones are answered as usual
            assert (await read_response(reader))[0] == 200


async def test_slow_loris_connections_at_the_limit_make_room_for_an_app(serve: Serve) -> None:
    """Connections trickling a head (a flood of slow-loris clients) do not keep a new client
    out for the whole header timeout: the slowest makes room once its head has taken over
    SLOW_HEAD_S, before an app's kept-alive idle connection would."""
    limits = {"max_connections": 5, "header_timeout_s": 30.0}
    async with serve(**limits) as (app, server), contextlib.AsyncExitStack() as stack:
        kept_reader, kept_writer = await stack.enter_async_context(connect(server.port))
        kept_writer.write(b"GET /kept HTTP/1.1\r\n\r\n")
        assert (await read_response(kept_reader))[0] == 200
        slow = [await stack.enter_async_context(connect(server.port)) for _ in range(4)]
        for _, writer in slow:
            writer.write(b"GET /loris HTTP/1.1\r\nX-Pad: a")  # never finished
        await asyncio.sleep(SLOW_HEAD_S + 0.1)
        reader, writer = await stack.enter_async_context(connect(server.port))
        writer.write(b"GET /new HTTP/1.1\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        assert await closed_by_server(slow[0][0])  # the slowest head made room
        assert server.slow_heads_closed == 1
        kept_writer.write(b"GET /kept-again HTTP/1.1\r\n\r\n")  # still open
        assert (await read_response(kept_reader))[0] == 200
        assert len(server.connections) <= 5
    assert app.paths == ["/kept", "/new", "/kept-again"]


IDLE_CONNECTIONS = 1000


async def test_many_idle_connections_are_held_to_the_limit(serve: Serve) -> None:
    async with serve(max_connections=64) as (app, server):
        # A burst: the kernel queues them all before the server accepts any, so the
        # server admits them in one batch (evicting in a batch once kept them all).
        burst = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(900)]
        try:
            await asyncio.sleep(0.2)
            assert len(server.connections) <= 64
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(IDLE_CONNECTIONS - len(burst)):  # and one by one
                    await stack.enter_async_context(connect(server.port))
                await asyncio.sleep(0.1)
                assert len(server.connections) <= 64
                reader, writer = await stack.enter_async_context(connect(server.port))
                writer.write(b"GET /ok HTTP/1.1\r\n\r\n")
                assert (await read_response(reader))[0] == 200
        finally:
            for conn in burst:
                conn.close()
    assert app.paths == ["/ok"]


def test_the_same_holds_on_uvloop() -> None:
    """The sidecar runs on uvloop where installed; flow control and deadlines rest on its
    transports' signals and clock, so the cases above run on it too."""
    uvloop = pytest.importorskip("uvloop")
    cases: list[Callable[[Serve], Awaitable[None]]] = [
        test_an_upgrade_request_with_a_chunked_body_is_refused,
        test_connect_is_refused_and_what_follows_is_never_parsed,
        test_chunked_trailers_never_touch_the_request_headers,
        test_more_header_fields_than_the_limit_get_431,
        test_a_client_that_never_reads_cannot_grow_the_write_buffer,
        test_one_read_of_thousands_of_tiny_requests_is_parsed_as_answers_make_room,
        test_queued_bodies_are_bounded_by_the_body_limit_not_by_their_count,
        test_slow_loris_headers_are_cut_off_by_the_header_timeout,
        test_a_body_that_does_not_arrive_is_cut_off_by_the_body_timeout,
        test_a_client_that_stops_reading_a_stream_is_cut_off,
        test_connections_are_bounded_the_longest_idle_makes_room,
        test_when_every_connection_is_busy_a_new_one_is_refused,
    ]

    async def run_all() -> None:
        for split in (False, True):
            await test_an_upgrade_requests_body_is_its_body_never_a_request(serve_server, split)
        for case in cases:
            await case(serve_server)

    uvloop.run(run_all())
