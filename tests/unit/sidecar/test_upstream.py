"""The keep-alive client for JSON calls to upstreams, against real loopback servers that
answer in the ways HTTP allows: sized or chunked bodies, compressed ones, closes, errors."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from typing import Any

import pytest

from clawdbot_sidecar.upstream import Upstream, UpstreamError, retry_after
from tests.support.servers import free_port

Answer = Callable[[bytes], bytes]


def sized(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


class Server:
    """A raw HTTP/1.1 server: ``answer(request)`` gives the bytes to send back (b"": none)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                out = self.answer(request)
                if out == b"close":
                    break
                if out:
                    writer.write(out)
                    await writer.drain()
                if out.startswith(b"HTTP/1.0"):
                    break  # an answer without a length ends with the connection
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Any]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> Server:
        s = Server(answer)
        servers.append(await s.start())
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream.create(connect_timeout_s=1.0)
    yield up
    await up.close()


OK = json.dumps({"id": "x", "choices": [{"message": {"content": "hi é"}}]}).encode()


async def test_connections_are_reused_and_the_request_is_well_formed(
    serve: Any, upstream: Upstream
) -> None:
    server = await serve(lambda _: sized(OK))
    for _ in range(3):
        answer = await upstream.post_json(
            server.url, {"model": "m", "q": "é"}, {"Authorization": "Bearer k"}, 5
        )
        assert answer["choices"][0]["message"]["content"] == "hi é"
    assert server.connections == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in lines
    assert b"Authorization: Bearer k" in lines
    assert b"Content-Type: application/json" in lines
    assert json.loads(body) == {"model": "m", "q": "é"}


async def test_connection_close_and_chunked_and_gzip_answers(
    serve: Any, upstream: Upstream
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(
            b"%x\r\n%b\r\n" % (len(OK[i : i + 7]), OK[i : i + 7]) for i in range(0, len(OK), 7)
        )
        + b"0\r\n\r\n"
    )
    packed = gzip.compress(OK)
    answers = iter(
        [
            sized(OK, extra="Connection: close\r\n"),
            chunked,
            sized(packed, extra="Content-Encoding: gzip\r\n"),
            b"HTTP/1.0 200 OK\r\n\r\n" + OK,  # ends with the connection
        ]
    )

    def answer(_: bytes) -> bytes:
        out = next(answers)
        return out

    server = await serve(answer)
    for _ in range(4):
        got = await upstream.post_json(server.url, {}, {}, 5)
        assert got["id"] == "x"
    # The closing answers forced new connections; the chunked and gzip ones reused theirs.
    assert server.connections == 2


async def test_interim_100_continue_is_skipped(serve: Any, upstream: Upstream) -> None:
    server = await serve(lambda _: b"HTTP/1.1 100 Continue\r\n\r\n" + sized(OK))
    assert (await upstream.post_json(server.url, {}, {}, 5))["id"] == "x"


async def test_error_status_carries_the_upstream_message(serve: Any, upstream: Upstream) -> None:
    err = json.dumps({"error": {"message": "model overloaded"}}).encode()
    server = await serve(lambda _: sized(err, "503 Service Unavailable"))
    with pytest.raises(UpstreamError) as exc:
        await upstream.post_json(server.url, {}, {}, 5)
    assert exc.value.kind == "status" and exc.value.status == 503
    assert str(exc.value) == "model overloaded" and exc.value.retryable
    # The error answer was read whole: the connection is reused for the next call.
    server.answer = lambda _: sized(OK)
    assert (await upstream.post_json(server.url, {}, {}, 5))["id"] == "x"
    assert server.connections == 1


async def test_invalid_and_non_object_json_are_protocol_errors(
    serve: Any, upstream: Upstream
) -> None:
    for body in (b"{nope", b"[1, 2]"):
        server = await serve(lambda _, body=body: sized(body))
        with pytest.raises(UpstreamError) as exc:
            await upstream.post_json(server.url, {}, {}, 5)
        assert exc.value.kind == "protocol"


async def test_json_the_standard_library_accepts_still_parses(
    serve: Any, upstream: Upstream
) -> None:
    big = 2**70
    server = await serve(lambda _: sized(b'{"n": %d, "f": NaN}' % big))
    answer = await upstream.post_json(server.url, {"seed": big}, {}, 5)
    assert answer["n"] == big
    assert json.loads(server.requests[0].partition(b"\r\n\r\n")[2])["seed"] == big


async def test_refused_connection_and_closed_before_answer(serve: Any, upstream: Upstream) -> None:
    with pytest.raises(UpstreamError) as exc:
        await upstream.post_json(f"http://127.0.0.1:{free_port()}/v1/x", {}, {}, 5)
    assert exc.value.kind == "connect" and exc.value.retryable
    server = await serve(lambda _: b"close")
    with pytest.raises(UpstreamError) as closed:
        await upstream.post_json(server.url, {}, {}, 5)
    assert closed.value.kind == "connect"


async def test_no_answer_within_the_timeout(serve: Any, upstream: Upstream) -> None:
    server = await serve(lambda _: b"")  # reads, never answers
    with pytest.raises(UpstreamError) as exc:
        await upstream.post_json(server.url, {}, {}, 0.2)
    assert exc.value.kind == "timeout" and "0.2s" in str(exc.value)
    # The timed-out connection is not reused for the next call.
    server.answer = lambda _: sized(OK)
    assert (await upstream.post_json(server.url, {}, {}, 5))["id"] == "x"
    assert server.connections == 2


async def test_header_values_with_line_breaks_are_refused(serve: Any, upstream: Upstream) -> None:
    server = await serve(lambda _: sized(OK))
    with pytest.raises(ValueError, match="Authorization"):
        await upstream.post_json(server.url, {}, {"Authorization": "Bearer k\r\nX: y"}, 5)
    assert server.requests == []


# --- connect timeouts and Retry-After ---------------------------------------------------


async def test_a_peer_that_never_accepts_fails_as_a_connect_error_at_the_connect_timeout(
    blackhole: str, upstream: Upstream
) -> None:
    url = f"{blackhole}/chat/completions"
    loop = asyncio.get_running_loop()
    for call in (upstream.post_json, upstream.open_stream):
        started = loop.time()
        with pytest.raises(UpstreamError) as exc:
            async with asyncio.timeout(10):  # the whole-call limit below is 30 s
                await call(url, {"stream": True}, {}, 30, 0.3)
        elapsed = loop.time() - started
        # Unreachable, so the caller may try another endpoint; not a timeout of the answer.
        assert exc.value.kind == "connect" and exc.value.retryable, call
        assert "0.3s" in str(exc.value) and 0.25 < elapsed < 3, (call, elapsed)


async def test_the_default_connect_timeout_applies_when_a_call_names_none(blackhole: str) -> None:
    up = Upstream.create(connect_timeout_s=0.3)
    try:
        for call in (up.post_json, up.open_stream):
            with pytest.raises(UpstreamError) as exc:
                async with asyncio.timeout(10):
                    await call(f"{blackhole}/embeddings", {}, {}, 30)
            assert exc.value.kind == "connect", call
    finally:
        await up.close()


async def test_a_connect_within_the_call_timeout_but_past_it_is_a_timeout(
    blackhole: str, upstream: Upstream
) -> None:
    # The whole call's limit came first: its time is spent, which is a timeout.
    with pytest.raises(UpstreamError) as exc:
        await upstream.post_json(f"{blackhole}/x", {}, {}, 0.2, 5.0)
    assert exc.value.kind == "timeout"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("Retry-After: 7\r\n", 7.0),
        ("retry-after-ms: 250\r\nRetry-After: 1\r\n", 0.25),  # the finer one wins
        ("Retry-After: soon\r\n", None),
        ("", None),
    ],
)
async def test_error_answers_carry_their_retry_after(
    serve: Any, upstream: Upstream, extra: str, expected: float | None
) -> None:
    err = json.dumps({"error": {"message": "slow down"}}).encode()
    server = await serve(lambda _: sized(err, "429 Too Many Requests", extra))
    for call in (upstream.post_json, upstream.open_stream):
        with pytest.raises(UpstreamError) as exc:
            await call(server.url, {}, {}, 5)
        assert exc.value.status == 429 and exc.value.retry_after_s == expected, call


def test_retry_after_values() -> None:
    assert retry_after("120") == 120.0
    assert retry_after("1.5") == 1.5
    assert retry_after(None, "40") == 0.04
    assert retry_after("3", "nan") == 3.0  # an unreadable ms value falls back to seconds
    assert retry_after("-1") is None and retry_after("inf") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    soon = formatdate(time.time() + 30, usegmt=True)
    wait = retry_after(soon)
    assert wait is not None and 25 < wait <= 30
    assert retry_after("Wed, 21 Oct 2015 07:28:00") is None  # no zone: not an HTTP date
