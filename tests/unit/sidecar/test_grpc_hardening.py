"""The gRPC front against hostile clients, over real loopback sockets: a handshake trickled
byte by byte is cut off, an idle connection is closed with GOAWAY, and connections are
capped (a slot frees when one of those ends)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clawdbot_sidecar.config import SidecarConfig
from clawdbot_sidecar.fronts.grpc import GrpcFront
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.upstream import Upstream

# Short limits so the tests wait fractions of a second (production: 10 s, 75 s, 4,096).
HANDSHAKE_TIMEOUT_S = 0.5
IDLE_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 2
WAIT_S = 5.0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@contextlib.asynccontextmanager
async def grpc_front() -> AsyncIterator[int]:
    config = SidecarConfig.model_validate({"policy": {"audit": {"enabled": False}}})
    upstream = Upstream.create(connect_timeout_s=1.0)
    core = RoutingCore(config, upstream, seed=1)
    front = GrpcFront(
        core,
        "127.0.0.1",
        0,
        handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
        idle_timeout_s=IDLE_TIMEOUT_S,
        max_connections=MAX_CONNECTIONS,
    )
    await front.start()
    try:
        yield front.port
    finally:
        await front.stop(0)
        await core.close()
        await upstream.close()


def raw_connection(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setblocking(False)
    return conn


async def closed_within(conn: socket.socket, seconds: float, trickle: bytes = b"") -> float:
    """Seconds until the server closes ``conn`` (sending ``trickle`` a byte per 50 ms);
    fails if it is still open after ``seconds``."""
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        try:
            if conn.recv(4096) == b"":
                return time.monotonic() - started
        except BlockingIOError:
            pass
        except ConnectionError:
            return time.monotonic() - started
        if sent < len(trickle):
            with contextlib.suppress(OSError):
                conn.send(trickle[sent : sent + 1])
            sent += 1
        await asyncio.sleep(0.05)
    raise AssertionError(f"still open after {seconds}s")


async def check_health(port: int) -> grpc.aio.Channel:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    return channel


async def test_a_handshake_trickled_byte_by_byte_is_cut_off() -> None:
    async with grpc_front() as port:
        conn = raw_connection(port)
        try:
            # The preface alone is 24 bytes: trickled, it would take 1.2 s, and gRPC's own
            # limit is 120 s.
            elapsed = await closed_within(conn, WAIT_S, trickle=PREFACE * 4)
        finally:
            conn.close()
        assert elapsed < HANDSHAKE_TIMEOUT_S + 1.0
        channel = await check_health(port)  # and the front serves the next client
        await channel.close()


async def test_an_idle_connection_is_closed_with_goaway() -> None:
    async with grpc_front() as port:
        channel = await check_health(port)
        try:
            state = channel.get_state()
            assert state == grpc.ChannelConnectivity.READY
            # Bounded: the server's GOAWAY moves the channel out of READY.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT_S):
                    while state == grpc.ChannelConnectivity.READY:
                        await channel.wait_for_state_change(state)
                        state = channel.get_state()
            assert state != grpc.ChannelConnectivity.READY
            await check_health(port)  # the client reconnects on its next call
        finally:
            await channel.close()


async def test_connections_past_the_cap_are_refused_until_a_slot_frees() -> None:
    async with grpc_front() as port:
        held = [raw_connection(port) for _ in range(MAX_CONNECTIONS)]
        extra = raw_connection(port)
        try:
            await closed_within(extra, 1.0)  # refused at once
            # The held ones never finish a handshake: they are cut off, and slots free.
            for conn in held:
                await closed_within(conn, WAIT_S)
            channel = await check_health(port)
            await channel.close()
        finally:
            for conn in [*held, extra]:
                conn.close()
