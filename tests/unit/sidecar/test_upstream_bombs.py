"""Compressed answers from an upstream that inflate far past any real answer (a zip bomb),
against a real loopback server: refused with a protocol error, holding no more memory than
the answer limit (a whole answer) or one inflation step (a stream); honest compressed
answers and streams still arrive whole."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator

import pytest

from clawdbot_sidecar.upstream import Upstream, UpstreamError
from clawdbot_sidecar.upstream.client import MAX_ANSWER_BYTES, STREAM_BUFFER_BYTES

# What the issue measured: 199 KiB of gzip that became 200 MiB once inflated.
BOMB_BYTES = 200 * 1024 * 1024
# Room above what the client may hold, for the test's own allocations (server buffers,
# the request) and the allocator's rounding.
SLACK_BYTES = 8 * 1024 * 1024
EVENT = (
    b"data: "
    + json.dumps({"choices": [{"index": 0, "delta": {"content": "a" * 4000}}]}).encode()
    + b"\n\n"
)


def compress(block: bytes, total: int, wbits: int) -> bytes:
    """``block`` repeated to ``total`` bytes, compressed (31: gzip, 15: zlib, -15: raw)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    unit = block * max(1, (1 << 20) // len(block))
    parts = [packer.compress(unit) for _ in range(total // len(unit))]
    return b"".join([*parts, packer.flush()])


@pytest.fixture(scope="module")
def json_bombs() -> dict[str, bytes]:
    return {
        "gzip": compress(b"0", BOMB_BYTES, 31),
        "deflate": compress(b"0", BOMB_BYTES, 15),
        "raw-deflate": compress(b"0", BOMB_BYTES, -15),
    }


@pytest.fixture(scope="module")
def stream_bomb() -> bytes:
    return compress(EVENT, BOMB_BYTES, 31)


@contextlib.asynccontextmanager
async def answering(head: bytes, body: bytes) -> AsyncIterator[str]:
    """A loopback upstream that answers every request with ``head`` and ``body``."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
            await reader.read()  # until the client closes
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
    finally:
        server.close()


@contextlib.contextmanager
def peak_memory() -> Iterator[list[int]]:
    """Yields a list that holds, afterwards, the peak of traced allocations in bytes."""
    tracemalloc.start()
    out: list[int] = []
    try:
        yield out
    finally:
        out.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream.create(connect_timeout_s=1.0)
    yield up
    await up.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
async def test_a_compressed_answer_that_inflates_past_the_limit_is_refused(
    upstream: Upstream, json_bombs: dict[str, bytes], encoding: str
) -> None:
    bomb = json_bombs[encoding]
    assert len(bomb) < 1024 * 1024  # a few hundred KiB on the wire
    name = "deflate" if encoding == "raw-deflate" else encoding
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: {name}\r\n"
    async with answering(head.encode(), bomb) as url:
        with peak_memory() as peak, pytest.raises(UpstreamError) as refused:
            await upstream.post_json(url, {"model": "m"}, {}, 30.0)
    assert refused.value.kind == "protocol"
    assert "too large once decompressed" in str(refused.value)
    # At most the limit is ever held (it was twice the limit, and before that all of it).
    assert peak[0] < MAX_ANSWER_BYTES + SLACK_BYTES, f"peak {peak[0] / 2**20:.0f} MiB"


async def test_a_compressed_stream_that_inflates_past_the_limit_is_refused(
    upstream: Upstream, stream_bomb: bytes
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
    events = 0
    async with answering(head, stream_bomb) as url:
        handle = await upstream.open_stream(url, {"model": "m", "stream": True}, {}, 60.0)
        with peak_memory() as peak, pytest.raises(UpstreamError) as refused:
            async for _ in handle.events():
                events += 1
    assert refused.value.kind == "protocol"
    assert "too large once decompressed" in str(refused.value)
    # The events up to the limit were delivered, and no more.
    assert events == MAX_ANSWER_BYTES // len(EVENT)
    # One inflation step at a time, not the limit (one step was up to 64 MiB of events,
    # decoded at once into millions of dicts: 617 MiB).
    assert peak[0] < 16 * STREAM_BUFFER_BYTES + SLACK_BYTES, f"peak {peak[0] / 2**20:.0f} MiB"


async def test_an_honest_compressed_stream_arrives_whole_and_in_order(
    upstream: Upstream,
) -> None:
    # Several inflation steps' worth, so the stream is read across paused reads.
    count = 4 * STREAM_BUFFER_BYTES // len(EVENT) + 7
    events = [
        b"data: " + json.dumps({"n": i, "pad": "b" * 4000}).encode() + b"\n\n" for i in range(count)
    ]
    body = gzip.compress(b"".join(events) + b"data: [DONE]\n\n")
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
    async with answering(head, body) as url:
        handle = await upstream.open_stream(url, {"model": "m", "stream": True}, {}, 30.0)
        seen = [event["n"] async for event in handle.events()]
    assert seen == list(range(count))


async def test_an_honest_compressed_answer_arrives_whole(upstream: Upstream) -> None:
    answer = {"choices": [{"message": {"content": "c" * (3 * 1024 * 1024)}}]}  # > one step
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
    async with answering(head, gzip.compress(json.dumps(answer).encode())) as url:
        assert await upstream.post_json(url, {"model": "m"}, {}, 30.0) == answer


async def test_a_corrupt_compressed_answer_is_a_protocol_error(upstream: Upstream) -> None:
    body = gzip.compress(b'{"choices": []}')
    corrupt = body[:20] + bytes(b ^ 0xFF for b in body[20:])
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
    async with answering(head, corrupt) as url:
        with pytest.raises(UpstreamError) as refused:
            await upstream.post_json(url, {"model": "m"}, {}, 30.0)
    assert refused.value.kind == "protocol"
