"""The discovery gRPC service: policies and endpoints down to sidecars, load reports up.

A sidecar subscribes for its own pod, with the pod-bound token the kubelet projects into it
(audience ``clawdbot``, checked by TokenReview). Its stream is a subscription on the
:class:`~clawdbot_operator.discovery.state.DiscoveryState`: woken by the changes that can
affect its pod (see ``state``), and at least every ``RESYNC_S``, it recomputes the pod's
snapshot and sends it only if it changed. The subscription is not authorised once for
good: it ends, with a status that says why, when

* the token expires (its ``exp`` claim) or no longer passes TokenReview, asked again at the
  latest every ``REVIEW_S`` (a pod-bound token fails once its pod is gone):
  ``UNAUTHENTICATED``, and the sidecar reconnects with the token the kubelet rotated in;
* the pod is deleted, or replaced by another of the same name: ``NOT_FOUND``;
* the pod is relabelled (or re-annotated) so that another policy, or none, applies to it:
  ``FAILED_PRECONDITION``; the sidecar subscribes again and is served what now applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

import grpc

from clawdbot_api.discovery import discovery_pb2 as pb
from clawdbot_api.discovery import discovery_pb2_grpc as pb_grpc
from clawdbot_operator.discovery.relay import PeerRelay, relayed_by
from clawdbot_operator.discovery.reports import ReportIntake
from clawdbot_operator.discovery.resolve import EndpointInfo, Resolved
from clawdbot_operator.discovery.state import DiscoveryState, Subscription
from clawdbot_operator.discovery.tokenreview import Identity
from clawdbot_operator.loadreports import LoadReportStore
from clawdbot_operator.tls import ServingCertificates

__all__ = ["DiscoveryServicer", "DiscoveryState", "Identity", "add_to_server", "serve"]

log = logging.getLogger("clawdbot.operator.discovery")

# How often sidecars are asked to report load.
REPORT_INTERVAL_S = 10.0
# A subscriber re-checks its pod at least this often even without a change notification
# (covers a missed wake-up and a rotated Secret; the snapshot is recomputed in memory).
RESYNC_S = 30.0
# A subscriber's token is reviewed again at least this often (and when it expires).
REVIEW_S = 300.0

Manifest = Mapping[str, Any]


class TokenReviewer(Protocol):
    async def review(self, token: str, *, fresh: bool = False) -> Identity | None:
        """The identity of a valid token for the "clawdbot" audience, None otherwise;
        ``fresh``: ask the API server, not a cache."""
        ...


PodGetter = Callable[[str, str], Awaitable[Manifest | None]]
# (namespace, secret name, key) -> the value, or None when the Secret or key is missing.
SecretGetter = Callable[[str, str, str], Awaitable[str | None]]
# (namespace, ConfigMap name, key) -> the value, or None when the ConfigMap or key is missing.
ConfigMapGetter = Callable[[str, str, str], Awaitable[str | None]]


class StreamEnded(Exception):
    """A subscription may not go on; ``code`` and the message say why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


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
        get_config_map: ConfigMapGetter | None = None,
    ) -> None:
        """``get_secret``: reads the policy's cloud API key to send down; pass it only when the
        stream is served over TLS (None: sidecars get their key elsewhere). ``relay``
        forwards sidecars' reports to the other replicas; ``peer_account`` (namespace,
        service account) is whose tokens may send relayed reports (None: nobody's).
        ``get_config_map`` reads the semantic router's examples
        (quality.semantic.examplesConfigMapRef) to send down with the policy."""
        self.get_config_map = get_config_map
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
        ns, name = request.pod_namespace, request.pod_name
        identity = await self._authorize(context, ns, name)
        pod = await self.get_pod(ns, name)
        if pod is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"pod {ns}/{name} does not exist")
        assert pod is not None
        account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        if account != identity.service_account:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the token's service account is not the pod's ({account})",
            )
        token = _bearer(context) or ""
        sub = self.state.subscribe(ns, pod)
        try:
            async for snapshot in self._snapshots(sub, pod, identity, token, request):
                yield snapshot
        except StreamEnded as end:
            log.info("discovery stream of %s/%s ended: %s", ns, name, end)
            await context.abort(end.code, str(end))
        finally:
            self.state.unsubscribe(sub)

    async def _snapshots(
        self,
        sub: Subscription,
        pod: Manifest,
        identity: Identity,
        token: str,
        request: pb.SubscribeRequest,
    ) -> AsyncIterator[pb.Snapshot]:
        """The pod's snapshots, each one only when it differs from the last sent; raises
        StreamEnded when the subscription may not go on."""
        sent = request.known_version
        policy: str | None = None
        review_at = _review_at(identity)
        while True:
            current = self._current_pod(sub, pod)
            resolved = self.state.resolve(current)
            if policy is not None and resolved.policy_name != policy and current is not pod:
                raise StreamEnded(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"pod {sub.namespace}/{sub.pod_name} was relabelled: policy "
                    f"{resolved.policy_name or '(none)'!r} applies now, not "
                    f"{policy or '(none)'!r}; subscribe again",
                )
            pod, policy = current, resolved.policy_name
            sub.models = frozenset(m.name for m in resolved.policy.local_models) if (
                resolved.policy
            ) else frozenset()  # fmt: skip
            if not resolved.held:  # a policy with no valid spec: the sidecar keeps its own
                snapshot = await self._snapshot(resolved, sub.namespace)
                if snapshot.version != sent:
                    sent = snapshot.version
                    yield snapshot
            sub.woken.clear()
            wait_s = max(0.0, min(RESYNC_S, review_at - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.woken.wait(), wait_s)
            if time.time() >= review_at:
                review_at = await self._review_again(sub, token)

    def _current_pod(self, sub: Subscription, pod: Manifest) -> Manifest:
        """The subscribed pod as the watch last saw it; StreamEnded once it is gone."""
        seen = self.state.subscribed_pod(sub.namespace, sub.pod_name)
        meta = (seen or {}).get("metadata") or {}
        uid = (pod.get("metadata") or {}).get("uid")
        if seen is None or meta.get("deletionTimestamp") or (uid and meta.get("uid") != uid):
            raise StreamEnded(
                grpc.StatusCode.NOT_FOUND,
                f"pod {sub.namespace}/{sub.pod_name} was deleted; this stream served it",
            )
        return seen

    async def _review_again(self, sub: Subscription, token: str) -> float:
        """Review the token afresh; when to do so next. StreamEnded when it no longer
        passes (expired, or its pod is gone)."""
        identity = None
        with contextlib.suppress(Exception):  # the API server away: judged by exp alone
            identity = await self.reviewer.review(token, fresh=True)
        expired = identity is not None and identity.expires_at is not None and (
            identity.expires_at <= time.time()
        )  # fmt: skip
        if identity is None or expired or identity.pod_name != sub.pod_name:
            raise StreamEnded(
                grpc.StatusCode.UNAUTHENTICATED,
                "the token expired or no longer passes TokenReview; reconnect with the "
                "token the kubelet rotated in",
            )
        return _review_at(identity)

    async def _snapshot(self, resolved: Resolved, ns: str) -> pb.Snapshot:
        snapshot = to_snapshot(resolved)
        policy = resolved.policy
        if policy is not None and self.get_config_map is not None:
            semantic = policy.quality.semantic
            examples_ref = semantic.examples_config_map_ref
            if semantic.enabled and examples_ref is not None:
                examples = await self.get_config_map(ns, examples_ref.name, examples_ref.key)
                if examples:
                    snapshot.semantic_examples = examples
                    tag = hashlib.sha256(examples.encode()).hexdigest()[:8]
                    snapshot.version = f"{snapshot.version}-e{tag}"
        if self.get_secret is None or policy is None:
            return snapshot
        refs = {
            "cloud": policy.cloud.api_key_secret_ref if policy.cloud else None,
            "audit": policy.audit.hmac_key_secret_ref,
            "redis": policy.cache.redis_password_secret_ref,
        }
        values = {}
        for what, ref in refs.items():
            value = await self.get_secret(ns, ref.name, ref.key) if ref is not None else None
            if value:
                values[what] = value
        snapshot.cloud_api_key = values.get("cloud", "")
        snapshot.audit_hmac_key = values.get("audit", "").encode()
        snapshot.cache_redis_password = values.get("redis", "")
        if values:
            # A rotated key is a change: fold a digest of the keys into the version.
            digest = hashlib.sha256()
            for what, value in sorted(values.items()):
                digest.update(f"{what}:".encode() + value.encode() + b"\0")
            snapshot.version = f"{snapshot.version}-{digest.hexdigest()[:8]}"
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
        endpoints: dict[str, EndpointInfo] | None = None
        async for report in request_iterator:
            who = (report.pod_namespace, report.pod_name)
            if authorized != who:
                await self._authorize(context, *who)
                authorized, endpoints = who, None
            # Re-resolved for every report: endpoints come and go while a stream lasts.
            try:
                endpoints = await self._endpoints_of(*who)
            except Exception as exc:  # the API server unavailable (restarting): not the pod's
                # fault, so the stream stays; the endpoints last resolved for it still hold,
                # and a first report with none known yet waits for the next one.
                skipped = "" if endpoints is not None else "; skipped"
                log.warning(
                    "load report of %s/%s: cannot read its pod (%s)%s",
                    *who, type(exc).__name__, skipped,
                )  # fmt: skip
                if endpoints is None:
                    continue
            taken = self.intake.record(report, endpoints)
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


def _review_at(identity: Identity) -> float:
    """When a subscription's token is to be reviewed again (unix time)."""
    due = time.time() + REVIEW_S
    return min(due, identity.expires_at) if identity.expires_at is not None else due


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
