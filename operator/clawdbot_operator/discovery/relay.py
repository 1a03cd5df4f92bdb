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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


class PodLister(Protocol):
    async def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        """Objects of a kind in a namespace, by label selector."""
        ...


def _ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if not status.get("podIP") or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = status.get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def peer_relay(
    kube: PodLister,
    *,
    namespace: str,
    selector: str,
    token_file: Path,
    own_name: str,
    port: int,
    service_name: str,
    ca_cert: Callable[[], bytes],
) -> tuple[PeerRelay | None, tuple[str, str] | None]:
    """The relay of load reports to the other replicas, and the (namespace, service
    account) whose tokens may relay to this one; (None, None) when not configured.

    Peers are the Ready pods matching ``selector`` in ``namespace`` other than ``own_name``,
    dialled at their IP on ``port``; every replica's certificate names the discovery
    Service ``service_name``, which is what TLS is verified for (against ``ca_cert()``).
    """
    if not selector:
        return None, None
    if not token_file.is_file():
        log.warning("peer relay off: no token at %s (mount a projected serviceAccountToken, "
                    "audience clawdbot, there)", token_file)  # fmt: skip
        return None, None
    account = service_account_of(token_file.read_text().strip())
    if account is None:
        log.warning("peer relay off: %s is not a service-account token", token_file)
        return None, None
    target = f"{service_name}.{namespace}.svc"

    async def list_peers() -> list[str]:
        pods = await kube.list("v1", "Pod", namespace, selector)
        return [
            f"{p['status']['podIP']}:{port}"
            for p in pods
            if p["metadata"]["name"] != own_name and _ready(p)
        ]

    def channel(address: str) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(ca_cert())
        return grpc.aio.secure_channel(
            address, creds, options=[("grpc.ssl_target_name_override", target)]
        )

    relay = PeerRelay(own_name or "operator", list_peers, channel, token_file)
    log.info("relaying load reports to peers %r on port %d", selector, port)
    return relay, account


class RelayCollector(Collector):
    """The load-report relay's counters, read at scrape time (``relay()`` may be None:
    no relay, or not started yet)."""

    def __init__(self, relay: Callable[[], PeerRelay | None]) -> None:
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        relay = self.relay()
        yield CounterMetricFamily(
            "clawdbot_operator_load_reports_relayed",
            "Sidecar load reports this replica forwarded to the other replicas.",
            value=relay.relayed if relay else 0,
        )
        yield CounterMetricFamily(
            "clawdbot_operator_load_reports_relay_dropped",
            "Load reports dropped because a peer's queue was full (the peer is down or slow).",
            value=relay.dropped if relay else 0,
        )
        yield GaugeMetricFamily(
            "clawdbot_operator_relay_peers",
            "Other operator replicas this replica relays load reports to.",
            value=len(relay.peers) if relay else 0,
        )
