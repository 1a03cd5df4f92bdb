"""The discovery gRPC service: policies and endpoints down to sidecars, load reports up.

The operator's watchers feed a :class:`DiscoveryState`; every change bumps its generation
and wakes the subscribers, each of which recomputes its pod's snapshot and sends it only if
it changed. Any operator replica can serve the stream: the state is rebuilt from the API
server's watches in each replica, not shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from clawdbot_api.discovery import discovery_pb2 as pb
from clawdbot_api.discovery import discovery_pb2_grpc as pb_grpc
from clawdbot_api.v1alpha1 import RoutingPolicySpec
from clawdbot_operator.discovery.relay import PeerRelay, relayed_by
from clawdbot_operator.discovery.reports import ReportIntake
from clawdbot_operator.discovery.resolve import EndpointInfo, Ownership, Resolved, resolve
from clawdbot_operator.loadreports import LoadReportStore
from clawdbot_operator.tls import ServingCertificates

log = logging.getLogger("clawdbot.operator.discovery")

# How often sidecars are asked to report load.
REPORT_INTERVAL_S = 10.0
# A subscriber re-checks its pod at least this often even without a change notification
# (covers a missed wake-up; cheap, the snapshot is recomputed in memory).
RESYNC_S = 30.0

Manifest = Mapping[str, Any]


@dataclass(frozen=True)
class Identity:
    """Who a token belongs to, as the TokenReview says."""

    namespace: str
    service_account: str
    pod_name: str | None
    """From a pod-bound token (projected volume); None for other tokens."""


class TokenReviewer(Protocol):
    async def review(self, token: str) -> Identity | None:
        """The identity of a valid token for the "clawdbot" audience, None otherwise."""
        ...


PodGetter = Callable[[str, str], Awaitable[Manifest | None]]
# (namespace, secret name, key) -> the value, or None when the Secret or key is missing.
SecretGetter = Callable[[str, str, str], Awaitable[str | None]]


class DiscoveryState:
    """What the operator knows that sidecars need, per namespace; changes wake subscribers."""

    def __init__(self) -> None:
        self.policies: dict[str, dict[str, RoutingPolicySpec]] = {}
        self.model_pods: dict[str, dict[str, Manifest]] = {}
        self.served_names: dict[str, dict[str, str]] = {}
        self.ownership: dict[str, Ownership] = {}
        self._changed = asyncio.Condition()
        self.generation = 0

    async def _bump(self) -> None:
        async with self._changed:
            self.generation += 1
            self._changed.notify_all()

    async def set_policy(self, namespace: str, name: str, spec: RoutingPolicySpec | None) -> None:
        policies = self.policies.setdefault(namespace, {})
        if spec is None:
            policies.pop(name, None)
        else:
            policies[name] = spec
        await self._bump()

    async def set_model_pod(self, namespace: str, name: str, pod: Manifest | None) -> None:
        pods = self.model_pods.setdefault(namespace, {})
        if pod is None:
            pods.pop(name, None)
        else:
            pods[name] = pod
        await self._bump()

    async def set_served_name(
        self, namespace: str, deployment: str, model: str | None, uid: str | None = None
    ) -> None:
        """A ModelDeployment's served model name and UID (None: it is gone)."""
        names = self.served_names.setdefault(namespace, {})
        uids = self.ownership_of(namespace).model_deployments
        if model is None:
            names.pop(deployment, None)
            uids.pop(deployment, None)
        else:
            names[deployment] = model
            if uid:
                uids[deployment] = uid
        await self._bump()

    def ownership_of(self, namespace: str) -> Ownership:
        """The namespace's ownership records (created empty on first use)."""
        return self.ownership.setdefault(namespace, Ownership())

    async def set_controller(
        self, namespace: str, kind: str, uid: str, controller: str | None
    ) -> None:
        """A Deployment's controlling ModelDeployment UID, or a ReplicaSet's controlling
        Deployment UID (``kind`` says which; None: gone, or controlled by nothing)."""
        ownership = self.ownership_of(namespace)
        table = ownership.deployments if kind == "Deployment" else ownership.replica_sets
        if controller is None:
            table.pop(uid, None)
        else:
            table[uid] = controller
        await self._bump()

    def resolve(self, pod: Manifest) -> Resolved:
        ns = (pod.get("metadata") or {}).get("namespace", "")
        return resolve(
            pod,
            self.policies.get(ns, {}),
            self.model_pods.get(ns, {}).values(),
            self.served_names.get(ns, {}),
            self.ownership_of(ns),
        )

    async def wait_change(self, generation: int, within_s: float) -> int:
        """Wait until the generation moves past ``generation`` (or ``within_s``); the new one."""
        async with self._changed:
            if self.generation == generation:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), within_s)
            return self.generation


def to_snapshot(resolved: Resolved) -> pb.Snapshot:
    return pb.Snapshot(
        version=resolved.version,
        policy_name=resolved.policy_name,
        policy_spec_json=(
            resolved.policy.model_dump_json(by_alias=True, exclude_none=True)
            if resolved.policy
            else ""
        ),
        endpoints=[
            pb.Endpoint(url=e.url, model=e.model, model_deployment=e.model_deployment,
                        revision=e.revision)
            for e in resolved.endpoints
        ],
    )  # fmt: skip


def _bearer(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return None


class DiscoveryServicer(pb_grpc.DiscoveryServicer):
    def __init__(
        self,
        state: DiscoveryState,
        reviewer: TokenReviewer,
        get_pod: PodGetter,
        load_reports: LoadReportStore,
        *,
        get_secret: SecretGetter | None = None,
        relay: PeerRelay | None = None,
        peer_account: tuple[str, str] | None = None,
    ) -> None:
        """``get_secret``: reads the policy's cloud API key to send down; pass it only when the
        stream is served over TLS (None: sidecars get their key elsewhere). ``relay``
        forwards sidecars' reports to the other replicas; ``peer_account`` (namespace,
        service account) is whose tokens may send relayed reports (None: nobody's)."""
        self.relay = relay
        self.peer_account = peer_account
        self.get_secret = get_secret
        self.state = state
        self.reviewer = reviewer
        self.get_pod = get_pod
        self.load_reports = load_reports
        self.intake = ReportIntake(load_reports)

    async def _authorize(
        self, context: grpc.aio.ServicerContext[Any, Any], namespace: str, pod_name: str
    ) -> Identity:
        token = _bearer(context)
        if token is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>'"
            )
        identity = await self.reviewer.review(token or "")
        if identity is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "token rejected by TokenReview")
        assert identity is not None
        if identity.pod_name is None:
            # Any token of the namespace would otherwise do: insist on the kubelet's
            # pod-bound projected token, so a pod only receives its own policy and key.
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "the token is not bound to a pod; mount a projected serviceAccountToken "
                "(audience clawdbot), as the injected sidecar does",
            )
        if identity.namespace != namespace or identity.pod_name != pod_name:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the token is not for pod {namespace}/{pod_name}",
            )
        return identity

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Snapshot]:
        identity = await self._authorize(context, request.pod_namespace, request.pod_name)
        pod = await self.get_pod(request.pod_namespace, request.pod_name)
        if pod is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"pod {request.pod_namespace}/{request.pod_name} does not exist",
            )
        assert pod is not None
        account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        if account != identity.service_account:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the token's service account is not the pod's ({account})",
            )
        sent = request.known_version
        generation = -1
        while True:
            current = self.state.generation
            if current != generation or self.get_secret is not None:
                generation = current
                snapshot = await self._snapshot(pod)
                if snapshot.version != sent:
                    sent = snapshot.version
                    yield snapshot
            await self.state.wait_change(generation, RESYNC_S)

    async def _snapshot(self, pod: Manifest) -> pb.Snapshot:
        resolved = self.state.resolve(pod)
        snapshot = to_snapshot(resolved)
        policy = resolved.policy
        if self.get_secret is None or policy is None:
            return snapshot
        ns = (pod.get("metadata") or {}).get("namespace", "")
        secrets = hashlib.sha256()
        if policy.cloud and policy.cloud.api_key_secret_ref:
            ref = policy.cloud.api_key_secret_ref
            key = await self.get_secret(ns, ref.name, ref.key)
            if key:
                snapshot.cloud_api_key = key
                secrets.update(b"cloud:" + key.encode())
        if policy.audit.hmac_key_secret_ref:
            ref = policy.audit.hmac_key_secret_ref
            key = await self.get_secret(ns, ref.name, ref.key)
            if key:
                snapshot.audit_hmac_key = key.encode()
                secrets.update(b"audit:" + key.encode())
        if snapshot.cloud_api_key or snapshot.audit_hmac_key:
            # A rotated key is a change: fold a digest of the keys into the version.
            snapshot.version = f"{snapshot.version}-{secrets.hexdigest()[:8]}"
        return snapshot

    async def ReportLoad(
        self,
        request_iterator: AsyncIterator[pb.LoadReport],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.ReportAck:
        if relayed_by(context.invocation_metadata()) is not None:
            await self._authorize_peer(context)
            async for report in request_iterator:
                self.intake.record(report, None)  # checked where it arrived; never relayed
            return pb.ReportAck(interval_seconds=REPORT_INTERVAL_S)
        authorized: tuple[str, str] | None = None
        async for report in request_iterator:
            who = (report.pod_namespace, report.pod_name)
            if authorized != who:
                await self._authorize(context, *who)
                authorized = who
            # Re-resolved for every report: endpoints come and go while a stream lasts.
            taken = self.intake.record(report, await self._endpoints_of(*who))
            if self.relay is not None:
                self.relay.offer(taken)
        return pb.ReportAck(interval_seconds=REPORT_INTERVAL_S)

    async def _authorize_peer(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Relayed reports come from another replica: its token must be the operator's own
        service account's, or anyone could feed the autoscaler and the rollback check."""
        token = _bearer(context)
        identity = await self.reviewer.review(token) if token else None
        if identity is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "token rejected by TokenReview")
        assert identity is not None
        if self.peer_account != (identity.namespace, identity.service_account):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "relayed load reports are accepted only from the operator's own service "
                f"account, not {identity.namespace}/{identity.service_account}",
            )

    async def _endpoints_of(self, namespace: str, pod_name: str) -> dict[str, EndpointInfo]:
        """The endpoints the pod's own snapshot holds (url -> what they are): all a pod
        may report about."""
        pod = await self.get_pod(namespace, pod_name)
        if pod is None:
            return {}
        return {e.url: e for e in self.state.resolve(pod).endpoints}


def add_to_server(server: grpc.aio.Server, servicer: DiscoveryServicer) -> None:
    """Serve ``servicer`` on ``server``."""
    pb_grpc.add_DiscoveryServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]


async def serve(
    servicer: DiscoveryServicer, address: str, certificates: ServingCertificates
) -> tuple[grpc.aio.Server, int]:
    """Start the stream over TLS at ``address`` (host:port) with the operator's serving
    certificate; a renewed one is handed to gRPC before the next handshake. Returns the
    server and the port it got."""

    def current() -> grpc.ServerCertificateConfiguration:
        bundle = certificates.bundle
        assert bundle is not None, "certificates.start() runs before the servers"
        return grpc.ssl_server_certificate_configuration([(bundle.key, bundle.cert)])

    served = certificates.version

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # gRPC asks before each handshake; None keeps the configuration it has.
        nonlocal served
        if served == certificates.version:
            return None
        served = certificates.version
        return current()

    server = grpc.aio.server()
    add_to_server(server, servicer)
    port = server.add_secure_port(address, grpc.dynamic_ssl_server_credentials(current(), fetch))
    await server.start()
    return server, port
