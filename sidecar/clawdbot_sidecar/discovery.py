"""The sidecar's end of the discovery stream: take snapshots, report load.

The sidecar keeps serving with its last good snapshot whenever the operator is away, and
reconnects with jittered exponential backoff. A snapshot that fails validation is
rejected (logged) and the previous one stays in force. The token is re-read from its file
before each connection, as the kubelet rotates projected tokens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from pydantic import ValidationError

from clawdbot_api.discovery import discovery_pb2 as pb
from clawdbot_api.discovery import discovery_pb2_grpc as pb_grpc
from clawdbot_api.v1alpha1 import RoutingPolicySpec
from clawdbot_sidecar.config import LocalEndpoint, SidecarConfig
from clawdbot_sidecar.upstream.pool import LocalPool

log = logging.getLogger("clawdbot.sidecar.discovery")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
# How often load reports go up; CLAWDBOT_SIDECAR_REPORT_INTERVAL_S overrides it.
DEFAULT_REPORT_INTERVAL_S = 10.0


@dataclass(frozen=True)
class PodIdentity:
    namespace: str
    name: str


def config_from_snapshot(snapshot: pb.Snapshot, base: SidecarConfig) -> SidecarConfig:
    """The sidecar config a snapshot describes (limits, and the cloud, audit and Redis keys
    unless the snapshot carries them, stay from ``base``).

    Raises ValueError (naming the field) for a snapshot whose policy doesn't validate.
    """
    policy = (
        RoutingPolicySpec.model_validate_json(snapshot.policy_spec_json)
        if snapshot.policy_spec_json
        else RoutingPolicySpec()
    )
    endpoints = tuple(
        LocalEndpoint(
            url=e.url, model=e.model, revision=str(e.revision), deployment=e.model_deployment
        )
        for e in snapshot.endpoints
    )
    update: dict[str, object] = {
        "policy": policy,
        "policy_name": snapshot.policy_name,
        "endpoints": endpoints,
    }
    if snapshot.cloud_api_key:
        update["cloud_api_key"] = snapshot.cloud_api_key
    if snapshot.audit_hmac_key:
        update["audit_hmac_key"] = snapshot.audit_hmac_key
    if snapshot.cache_redis_password:
        update["cache_redis_password"] = snapshot.cache_redis_password
    update["semantic_examples"] = snapshot.semantic_examples or None
    return base.model_copy(update=update)


def load_report(pod: PodIdentity, pool: LocalPool) -> pb.LoadReport:
    """The pool's counters and latencies as one report."""
    report = pb.LoadReport(
        pod_namespace=pod.namespace, pod_name=pod.name, unix_ms=int(time.time() * 1000)
    )
    for state in pool.states:
        latencies = sorted(state.latencies_s)

        def pct(q: float, xs: list[float] = latencies) -> float:
            return xs[min(int(q * len(xs)), len(xs) - 1)] * 1000 if xs else 0.0

        e = state.endpoint
        report.endpoints.append(
            pb.EndpointLoad(
                url=e.url,
                model_deployment=e.deployment,
                revision=int(e.revision) if e.revision.isdigit() else 0,
                in_flight=state.in_flight,
                requests=state.requests,
                errors=state.errors,
                latency_p50_ms=pct(0.5),
                latency_p95_ms=pct(0.95),
                in_flight_seconds=state.in_flight_seconds(),
            )
        )
    return report


class DiscoveryClient:
    """Subscribes for one pod; calls ``apply`` with each new config."""

    def __init__(
        self,
        address: str,
        pod: PodIdentity,
        token_file: Path | None,
        *,
        base: SidecarConfig,
        apply: Callable[[SidecarConfig], None],
        pool: LocalPool,
        ca_pem: bytes | None = None,
    ) -> None:
        self.address = address
        self.pod = pod
        self.token_file = token_file
        self.base = base
        self.apply = apply
        self.pool = pool
        self.ca_pem = ca_pem
        self.version = ""
        self.synced = asyncio.Event()
        """Set once a first snapshot was applied (the sidecar's readiness waits on it)."""
        self.report_interval_s = float(
            os.environ.get("CLAWDBOT_SIDECAR_REPORT_INTERVAL_S", DEFAULT_REPORT_INTERVAL_S)
        )

    def _channel(self) -> grpc.aio.Channel:
        if self.ca_pem:
            creds = grpc.ssl_channel_credentials(self.ca_pem)
            return grpc.aio.secure_channel(self.address, creds)
        return grpc.aio.insecure_channel(self.address)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self.token_file is None:
            return ()
        return (("authorization", f"Bearer {self.token_file.read_text().strip()}"),)

    def _take(self, snapshot: pb.Snapshot) -> None:
        try:
            config = config_from_snapshot(snapshot, self.base)
        except (ValidationError, ValueError) as exc:
            log.error("rejected snapshot %s, keeping %s: %s", snapshot.version, self.version, exc)
            return
        try:
            self.apply(config)
        except Exception:  # e.g. a cache backend that can't be built: keep serving
            log.exception("could not apply snapshot %s, keeping %s", snapshot.version, self.version)
            return
        self.version = snapshot.version
        self.synced.set()
        log.info(
            "applied snapshot %s: policy %r, %d local endpoints",
            snapshot.version,
            snapshot.policy_name,
            len(snapshot.endpoints),
        )

    async def run(self) -> None:
        """Subscribe and report until cancelled; reconnect with backoff on any failure."""
        delay = BACKOFF_MIN_S
        while True:
            try:
                async with self._channel() as channel:
                    stub = pb_grpc.DiscoveryStub(channel)  # type: ignore[no-untyped-call]
                    reporter = asyncio.create_task(self._report(stub))
                    try:
                        request = pb.SubscribeRequest(
                            pod_namespace=self.pod.namespace,
                            pod_name=self.pod.name,
                            known_version=self.version,
                        )
                        async for snapshot in stub.Subscribe(request, metadata=self._metadata()):
                            delay = BACKOFF_MIN_S
                            self._take(snapshot)
                    finally:
                        reporter.cancel()
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "discovery stream to %s ended (%s: %s); serving the last snapshot, "
                    "retrying in %.1fs",
                    self.address,
                    exc.code().name,
                    exc.details(),
                    delay,
                )
            except OSError as exc:
                log.warning("cannot read the discovery token: %s; retrying in %.1fs", exc, delay)
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _reports(self) -> AsyncIterator[pb.LoadReport]:
        while True:
            yield load_report(self.pod, self.pool)
            await asyncio.sleep(self.report_interval_s)

    async def _report(self, stub: pb_grpc.DiscoveryStub) -> None:
        """Stream load reports for as long as the subscription lasts (this task is cancelled
        with it). A report stream that ends while the subscription holds (the operator
        could not take a report, a replica handing over) is opened again with backoff:
        otherwise the pod's load would be missing from autoscaling and rollbacks until the
        subscription itself reconnects, which may be never."""
        delay = BACKOFF_MIN_S
        while True:
            started = time.monotonic()
            try:
                ack = await stub.ReportLoad(self._reports(), metadata=self._metadata())
                self.report_interval_s = ack.interval_seconds or self.report_interval_s
                log.info("load report stream closed by the operator; reopening")
            except grpc.aio.AioRpcError as exc:
                log.warning("load reports stopped (%s); retrying in %.1fs", exc.code().name, delay)
            except OSError as exc:
                log.warning("cannot read the discovery token: %s; retrying in %.1fs", exc, delay)
            if time.monotonic() - started > 2 * self.report_interval_s:
                delay = BACKOFF_MIN_S  # it had been working: not a repeat failure
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, BACKOFF_MAX_S)
