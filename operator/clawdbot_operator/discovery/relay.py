"""Relay of load reports between operator replicas.

Sidecars reach the discovery Service, so each report lands on one replica; but the
autoscaling metric (served by whichever replica the API server's aggregator dials) and the
rollback check (run by the leader) need all of them. Each replica therefore forwards what its
sidecars report to every other replica, over the same ``ReportLoad`` RPC, and every replica
holds the whole picture: no replica's answer depends on which one a sidecar or the
aggregator happened to pick, and a leader change loses nothing.

Relayed reports carry the ``x-clawdbot-relay`` header and are never relayed again. The
receiving replica accepts them only from a token of the operator's own service account
(a projected token, audience ``clawdbot``, checked by TokenReview like a sidecar's).

Reports are telemetry: a peer that is down or slow gets a bounded queue per peer, the oldest
reports dropped first (counted), so a dead peer costs memory for ``queue_size`` reports and
never slows the sidecars' streams.

Peers are the Ready pods matching ``peer_selector`` in the operator's namespace, other than
this one, dialled at their pod IP; TLS is verified against the shared CA for the discovery
Service's DNS name, which every replica's certificate carries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc

from clawdbot_api.discovery import discovery_pb2 as pb
from clawdbot_api.discovery import discovery_pb2_grpc as pb_grpc

log = logging.getLogger("clawdbot.operator.relay")

RELAY_HEADER: Final = "x-clawdbot-relay"
QUEUE_SIZE: Final = 2000
PEER_REFRESH_S: Final = 10.0
MAX_BACKOFF_S: Final = 10.0

# Peer pod IPs (the discovery port is the same on every replica).
PeerLister = Callable[[], Awaitable[list[str]]]
# address -> a channel to it (TLS set up by the caller).
ChannelFactory = Callable[[str], grpc.aio.Channel]


def service_account_of(token: str) -> tuple[str, str] | None:
    """(namespace, service account) named in a service-account JWT's claims, unverified:
    only used on this process's own token, to know which identity its peers present."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        sa = claims["kubernetes.io"]
        return str(sa["namespace"]), str(sa["serviceaccount"]["name"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


@dataclass
class _Peer:
    address: str
    queue: asyncio.Queue[pb.LoadReport]
    task: asyncio.Task[None] | None = None


@dataclass
class PeerRelay:
    """Forwards sidecar reports to the other replicas; see the module docstring."""

    self_name: str
    list_peers: PeerLister
    channel: ChannelFactory
    token_file: Path
    refresh_s: float = PEER_REFRESH_S
    queue_size: int = QUEUE_SIZE
    relayed: int = 0
    dropped: int = 0
    _peers: dict[str, _Peer] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def offer(self, report: pb.LoadReport) -> None:
        """Queue ``report`` for every peer; never blocks (drops the oldest when full)."""
        for peer in self._peers.values():
            if peer.queue.full():
                peer.queue.get_nowait()
                self.dropped += 1
            peer.queue.put_nowait(report)

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_loop(), name="peer-relay")

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *(p.task for p in self._peers.values())] if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._peers.clear()

    @property
    def peers(self) -> list[str]:
        return sorted(self._peers)

    async def refresh(self) -> None:
        """Start senders for new peers, stop those of peers gone."""
        addresses = set(await self.list_peers())
        for address in set(self._peers) - addresses:
            peer = self._peers.pop(address)
            if peer.task:
                peer.task.cancel()
            log.info("load-report relay: peer %s gone", address)
        for address in addresses - set(self._peers):
            peer = _Peer(address, asyncio.Queue(maxsize=self.queue_size))
            peer.task = asyncio.create_task(self._send(peer), name=f"relay-{address}")
            self._peers[address] = peer
            log.info("load-report relay: relaying to peer %s", address)

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the API server is away: keep the peers we have
                log.warning("load-report relay: cannot list peers: %s", exc)
            await asyncio.sleep(self.refresh_s)

    async def _send(self, peer: _Peer) -> None:
        """One client stream to the peer, reopened with backoff whenever it breaks."""
        backoff = 0.5
        while True:
            try:
                token = self.token_file.read_text().strip()  # re-read: the kubelet rotates it
                async with self.channel(peer.address) as channel:
                    stub = pb_grpc.DiscoveryStub(channel)  # type: ignore[no-untyped-call]
                    metadata = (("authorization", f"Bearer {token}"),
                                (RELAY_HEADER, self.self_name))  # fmt: skip
                    await stub.ReportLoad(self._drain(peer), metadata=metadata)
                backoff = 0.5
            except (grpc.aio.AioRpcError, OSError) as exc:
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc
                log.warning("load-report relay to %s failed (%s); retrying in %.1fs",
                            peer.address, detail, backoff)  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _drain(self, peer: _Peer) -> AsyncIterator[pb.LoadReport]:
        while True:
            report = await peer.queue.get()
            self.relayed += 1
            yield report


def relayed_by(metadata: Any) -> str | None:
    """The relaying replica's name from a call's metadata, None for a sidecar's call."""
    for key, value in metadata or ():
        if key == RELAY_HEADER and isinstance(value, str):
            return value
    return None
