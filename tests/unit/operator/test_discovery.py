"""The discovery stream over a real gRPC connection on loopback: operator side and sidecar side.

The TokenReview itself is the API server's job and runs in the e2e suite; here a reviewer
maps fixed tokens to identities.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import kopf
import pytest

from clawdbot_api.discovery import discovery_pb2 as pb
from clawdbot_api.discovery import discovery_pb2_grpc as pb_grpc
from clawdbot_api.v1alpha1 import RoutingPolicySpec
from clawdbot_operator.controllers.routingpolicy import RoutingPolicyController
from clawdbot_operator.discovery.relay import PeerRelay, service_account_of
from clawdbot_operator.discovery.reports import ReportIntake
from clawdbot_operator.discovery.resolve import EndpointInfo, Ownership, policy_for_pod, resolve
from clawdbot_operator.discovery.secrets import SecretCache
from clawdbot_operator.discovery.server import (
    DiscoveryServicer,
    DiscoveryState,
    Identity,
    add_to_server,
)
from clawdbot_operator.discovery.tokenreview import identity_from_status, token_expiry
from clawdbot_operator.loadreports import LoadReport, LoadReportStore
from clawdbot_sidecar.cache import CachedResponse, RedisCache, build_cache
from clawdbot_sidecar.config import SidecarConfig
from clawdbot_sidecar.discovery import (
    DiscoveryClient,
    PodIdentity,
    config_from_snapshot,
    load_report,
)
from clawdbot_sidecar.upstream.pool import LocalPool
from tests.support.servers import free_port

NS = "shop"
PEER_ACCOUNT = ("clawdbot-system", "clawdbot")
CHAT_POD = {
    "metadata": {"name": "chat-1", "namespace": NS, "labels": {"app": "chat"}},
    "spec": {"serviceAccountName": "chat", "containers": [{"name": "app"}]},
}
POLICY = RoutingPolicySpec.model_validate(
    {"podSelector": {"matchLabels": {"app": "chat"}}, "localModels": [{"name": "llama"}]}
)


# The chain that makes a pod llama's: ModelDeployment -> Deployment -> ReplicaSet -> pod.
MD_UID, DEPLOYMENT_UID, RS_UID = "md-llama", "dep-llama", "rs-llama"
OWNERSHIP = Ownership(
    model_deployments={"llama": MD_UID},
    deployments={DEPLOYMENT_UID: MD_UID},
    replica_sets={RS_UID: DEPLOYMENT_UID},
)


def controlled_by(kind: str, uid: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "apps/v1", "kind": kind, "name": "x", "uid": uid, "controller": True}]


def model_pod(
    name: str, ip: str, ready: bool = True, revision: str = "2", owner: str | None = RS_UID
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"clawdbot.io/model-deployment": "llama", "clawdbot.io/revision": revision},
            "ownerReferences": controlled_by("ReplicaSet", owner) if owner else [],
        },
        "spec": {"containers": [{"name": "server", "ports": [{"name": "http",
                                                              "containerPort": 8000}]}]},
        "status": {"podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }  # fmt: skip


def test_policy_resolution_annotation_then_selector() -> None:
    other = RoutingPolicySpec.model_validate({"podSelector": {"matchLabels": {"app": "x"}}})
    policies = {"b-chat": POLICY, "a-other": other}
    assert policy_for_pod(CHAT_POD, policies) == ("b-chat", POLICY)
    annotations = {"clawdbot.io/routing-policy": "a-other"}
    named = {**CHAT_POD, "metadata": {**CHAT_POD["metadata"], "annotations": annotations}}
    assert policy_for_pod(named, policies) == ("a-other", other)
    unmatched = {**CHAT_POD, "metadata": {"name": "y", "namespace": NS, "labels": {}}}
    assert policy_for_pod(unmatched, policies) is None


def test_only_ready_pods_of_the_policys_models_are_endpoints() -> None:
    pods = [
        model_pod("llama-a", "127.1.0.5"),
        model_pod("llama-b", "127.1.0.6", ready=False),
        {**model_pod("other", "127.1.0.7"),
         "metadata": {"name": "other", "labels": {"clawdbot.io/model-deployment": "mistral"}}},
    ]  # fmt: skip
    resolved = resolve(CHAT_POD, {"chat": POLICY}, pods, {"llama": "llama-3-8b"}, OWNERSHIP)
    assert [(e.url, e.model, e.revision) for e in resolved.endpoints] == [
        ("http://127.1.0.5:8000/v1", "llama-3-8b", 2)
    ]


def test_a_label_alone_makes_no_endpoint() -> None:
    """Sidecars send local endpoints unredacted prompts: a Ready pod that carries the
    ModelDeployment's label but is not controlled by its own ReplicaSet gets none."""
    strangers = [
        model_pod("bare", "127.1.0.20", owner=None),  # no owner at all
        model_pod("foreign-rs", "127.1.0.21", owner="rs-of-someone-else"),
    ]
    # A ReplicaSet that claims to be llama's, under a Deployment llama does not control.
    forged = Ownership(
        model_deployments={"llama": MD_UID},
        deployments={DEPLOYMENT_UID: MD_UID, "dep-forged": "md-other"},
        replica_sets={RS_UID: DEPLOYMENT_UID, "rs-forged": "dep-forged"},
    )
    strangers.append(model_pod("forged", "127.1.0.22", owner="rs-forged"))
    real = model_pod("llama-a", "127.1.0.5")
    resolved = resolve(CHAT_POD, {"chat": POLICY}, [*strangers, real], {"llama": "l"}, forged)
    assert [e.url for e in resolved.endpoints] == ["http://127.1.0.5:8000/v1"]
    # A ModelDeployment deleted and recreated under the same name has a new UID: the old
    # chain no longer counts.
    renamed = Ownership({"llama": "md-new"}, dict(forged.deployments), dict(forged.replica_sets))
    assert resolve(CHAT_POD, {"chat": POLICY}, [real], {}, renamed).endpoints == ()


def test_identity_from_token_review_status() -> None:
    class User:
        username = "system:serviceaccount:shop:chat"
        extra = {"authentication.kubernetes.io/pod-name": ["chat-1"]}

    class Status:
        authenticated = True
        audiences = ["clawdbot"]
        user = User()

    assert identity_from_status(Status()) == Identity("shop", "chat", "chat-1")
    Status.audiences = ["https://kubernetes.default.svc"]
    assert identity_from_status(Status()) is None


class Reviewer:
    tokens: Mapping[str, Identity] = {
        "good": Identity(NS, "chat", "chat-1"),
        "other-pod": Identity(NS, "chat", "chat-2"),
        "unbound": Identity(NS, "chat", None),
        "other-account": Identity(NS, "intruder", "chat-1"),
        "operator-a": Identity("clawdbot-system", "clawdbot", "clawdbot-a"),
        "operator-b": Identity("clawdbot-system", "clawdbot", "clawdbot-b"),
    }

    async def review(self, token: str, *, fresh: bool = False) -> Identity | None:
        return self.tokens.get(token)


class Operator:
    def __init__(
        self,
        relay: PeerRelay | None = None,
        secrets: dict[tuple[str, str], str] | None = None,
        servicer: type[DiscoveryServicer] = DiscoveryServicer,
    ) -> None:
        self.state = DiscoveryState()
        self.store = LoadReportStore(window=timedelta(hours=1))
        self.port = free_port()
        self.server: grpc.aio.Server | None = None
        self.relay = relay
        self.secrets = secrets  # (secret, key) -> value; None: keys are not sent down
        self.reviewer: Reviewer = Reviewer()
        self.api_down = False  # get_pod fails as with the API server unreachable
        self.servicer_class = servicer

    async def start(self) -> None:
        async def get_pod(ns: str, name: str) -> Mapping[str, Any] | None:
            if self.api_down:
                raise ConnectionRefusedError(111, "Connect call failed")
            return CHAT_POD if (ns, name) == (NS, "chat-1") else None

        self.server = grpc.aio.server()

        async def get_secret(ns: str, name: str, key: str) -> str | None:
            return (self.secrets or {}).get((name, key)) if ns == NS else None

        servicer = self.servicer_class(self.state, self.reviewer, get_pod, self.store,
                                     get_secret=get_secret if self.secrets is not None else None,
                                     relay=self.relay, peer_account=PEER_ACCOUNT)  # fmt: skip
        add_to_server(self.server, servicer)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)


def seed(state: DiscoveryState) -> None:
    """The chat policy, and llama with one ready endpoint at 127.1.0.5."""
    state.set_policy(NS, "chat", POLICY)
    state.set_served_name(NS, "llama", "llama-3-8b", MD_UID)
    state.set_controller(NS, "Deployment", DEPLOYMENT_UID, MD_UID)
    state.set_controller(NS, "ReplicaSet", RS_UID, DEPLOYMENT_UID)
    state.set_model_pod(NS, "llama-a", model_pod("llama-a", "127.1.0.5"))


@pytest.fixture
async def operator() -> AsyncIterator[Operator]:
    op = Operator()
    seed(op.state)
    await op.start()
    yield op
    await op.stop()


async def next_snapshot(stream: Any) -> pb.Snapshot:
    return await asyncio.wait_for(stream.read(), 5)  # type: ignore[no-any-return]


async def test_subscribe_pushes_changes_and_only_changes(operator: Operator) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{operator.port}") as channel:
        stub = pb_grpc.DiscoveryStub(channel)
        stream = stub.Subscribe(
            pb.SubscribeRequest(pod_namespace=NS, pod_name="chat-1"),
            metadata=(("authorization", "Bearer good"),),
        )
        first = await next_snapshot(stream)
        assert first.policy_name == "chat"
        assert [e.url for e in first.endpoints] == ["http://127.1.0.5:8000/v1"]
        assert RoutingPolicySpec.model_validate_json(first.policy_spec_json) == POLICY

        # A change that doesn't affect this pod's view sends nothing...
        operator.state.set_model_pod(NS, "not-ready", model_pod("n", "127.1.0.9", False))
        operator.state.set_model_pod(NS, "stranger", model_pod("s", "127.1.0.8", owner=None))
        # ...a new ready replica does.
        operator.state.set_model_pod(NS, "llama-b", model_pod("llama-b", "127.1.0.6"))
        second = await next_snapshot(stream)
        assert len(second.endpoints) == 2
        assert second.version != first.version
        stream.cancel()


async def test_keys_from_secrets_go_down_the_stream_and_rotate() -> None:
    """The cloud key and the audit chain's HMAC key reach the sidecar from their Secrets;
    rotating one is a new snapshot."""
    op = Operator(secrets={("cloud", "api-key"): "sk-1", ("audit", "hmac"): "chain-key-1"})
    policy = RoutingPolicySpec.model_validate({
        "podSelector": {"matchLabels": {"app": "chat"}}, "localModels": [{"name": "llama"}],
        "cloud": {"baseURL": "https://llm.example.com/v1", "model": "big",
                  "apiKeySecretRef": {"name": "cloud", "key": "api-key"}},
        "audit": {"hmacKeySecretRef": {"name": "audit", "key": "hmac"}},
    })  # fmt: skip
    op.state.set_policy(NS, "chat", policy)
    await op.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{op.port}") as channel:
            stream = pb_grpc.DiscoveryStub(channel).Subscribe(
                pb.SubscribeRequest(pod_namespace=NS, pod_name="chat-1"),
                metadata=(("authorization", "Bearer good"),),
            )
            first = await next_snapshot(stream)
            assert (first.cloud_api_key, first.audit_hmac_key) == ("sk-1", b"chain-key-1")
            config = config_from_snapshot(first, SidecarConfig())
            assert (config.cloud_api_key, config.audit_hmac_key) == ("sk-1", b"chain-key-1")
            assert op.secrets is not None
            op.secrets[("audit", "hmac")] = "chain-key-2"
            op.state.set_model_pod(NS, "llama-b", model_pod("llama-b", "127.1.0.6"))
            second = await next_snapshot(stream)
            assert second.audit_hmac_key == b"chain-key-2"
            assert second.version != first.version
            stream.cancel()
    finally:
        await op.stop()


@pytest.mark.parametrize(
    ("token", "pod", "code"),
    [
        (None, "chat-1", grpc.StatusCode.UNAUTHENTICATED),
        ("forged", "chat-1", grpc.StatusCode.UNAUTHENTICATED),
        ("other-pod", "chat-1", grpc.StatusCode.PERMISSION_DENIED),
        ("good", "missing", grpc.StatusCode.PERMISSION_DENIED),
        ("unbound", "chat-1", grpc.StatusCode.PERMISSION_DENIED),
        ("other-account", "chat-1", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_a_pod_only_gets_its_own_policy(
    operator: Operator, token: str | None, pod: str, code: grpc.StatusCode
) -> None:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{operator.port}") as channel:
        stream = pb_grpc.DiscoveryStub(channel).Subscribe(
            pb.SubscribeRequest(pod_namespace=NS, pod_name=pod), metadata=metadata
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await next_snapshot(stream)
    assert err.value.code() == code


async def test_sidecar_client_applies_keeps_last_good_and_reconnects(
    operator: Operator, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("good\n")
    applied: list[SidecarConfig] = []
    pool = LocalPool()
    client = DiscoveryClient(
        f"127.0.0.1:{operator.port}",
        PodIdentity(NS, "chat-1"),
        token,
        base=SidecarConfig(),
        apply=applied.append,
        pool=pool,
    )
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.synced.wait(), 5)
        assert [e.url for e in applied[-1].endpoints] == ["http://127.1.0.5:8000/v1"]
        assert applied[-1].endpoints[0].model == "llama-3-8b"

        # The operator goes away: the sidecar keeps what it has.
        await operator.stop()
        await asyncio.sleep(0.3)
        assert len(applied) == 1

        # It comes back with a change: the client reconnects and takes it.
        operator.state.set_model_pod(NS, "llama-b", model_pod("llama-b", "127.1.0.6"))
        await operator.start()
        for _ in range(100):  # bounded wait for the backoff + resubscribe
            if len(applied) > 1:
                break
            await asyncio.sleep(0.1)
        assert len(applied[-1].endpoints) == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class FirstReportStreamFails(DiscoveryServicer):
    """Ends the first load-report stream it is given, as an operator that could not take a
    report did (the subscription is untouched)."""

    report_streams = 0

    async def ReportLoad(
        self,
        request_iterator: AsyncIterator[pb.LoadReport],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.ReportAck:
        type(self).report_streams += 1
        if type(self).report_streams == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
        return await super().ReportLoad(request_iterator, context)


async def test_sidecar_reports_resume_when_the_report_stream_ends(tmp_path: Path) -> None:
    """A report stream that fails while the subscription holds is opened again: the pod's
    load keeps reaching the autoscaler and the rollback check."""
    FirstReportStreamFails.report_streams = 0
    op = Operator(servicer=FirstReportStreamFails)
    seed(op.state)
    await op.start()
    token = tmp_path / "token"
    token.write_text("good\n")
    pool = LocalPool(SidecarConfig.model_validate({"endpoints": [
        {"url": "http://127.1.0.5:8000/v1", "model": "llama-3-8b", "revision": "2",
         "deployment": "llama"}]}).endpoints)  # fmt: skip
    pool.states[0].requests = 7
    client = DiscoveryClient(f"127.0.0.1:{op.port}", PodIdentity(NS, "chat-1"), token,
                             base=SidecarConfig(), apply=lambda _: None, pool=pool)  # fmt: skip
    client.report_interval_s = 0.1
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.synced.wait(), 5)
        for _ in range(100):  # bounded: the backoff (0.5 s at first), then a report
            if op.store.revision_health(NS, "llama", 2, datetime.now(UTC)) is not None:
                break
            await asyncio.sleep(0.05)
        health = op.store.revision_health(NS, "llama", 2, datetime.now(UTC))
        assert health is not None and health.requests == 7
        assert FirstReportStreamFails.report_streams == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await op.stop()


async def test_load_reports_become_rates_over_the_time_between_reports(
    operator: Operator,
) -> None:
    """Mean in flight = growth of the in-flight integral / time between the two reports as
    the operator received them (a snapshot of in_flight would read 0 between two short
    requests); requests/s likewise."""
    url = "http://127.1.0.5:8000/v1"
    gap_s = 0.5

    def report(requests: int, in_flight_s: float, in_flight: int) -> pb.LoadReport:
        load = pb.EndpointLoad(url=url, model_deployment="llama", revision=2, requests=requests,
                               in_flight=in_flight, in_flight_seconds=in_flight_s)  # fmt: skip
        return pb.LoadReport(pod_namespace=NS, pod_name="chat-1", endpoints=[load])

    async def reports() -> AsyncIterator[pb.LoadReport]:
        yield report(100, 50.0, 7)  # first report: only the snapshot is a rate
        await asyncio.sleep(gap_s)
        yield report(110, 51.5, 0)  # 10 requests and 1.5 request-seconds later

    async with grpc.aio.insecure_channel(f"127.0.0.1:{operator.port}") as channel:
        await pb_grpc.DiscoveryStub(channel).ReportLoad(
            reports(), metadata=(("authorization", "Bearer good"),)
        )
    (inflight,) = operator.store.metric_values(NS, "clawdbot_inflight_requests")
    assert inflight.value == pytest.approx(1.5 / gap_s, rel=0.2)  # not the 0 seen at the end
    (rps,) = operator.store.metric_values(NS, "clawdbot_requests_per_second")
    assert rps.value == pytest.approx(10 / gap_s, rel=0.2)
    health = operator.store.revision_health(NS, "llama", 2, datetime.now(UTC))
    assert health is not None and health.requests == 110  # 100 before + 10 since


async def test_gauges_of_a_silent_source_stop_counting(operator: Operator) -> None:
    """A sidecar that stopped reporting (or an endpoint gone with a scale-down) must not hold
    the autoscaling metric up for the whole report window."""
    store = operator.store
    old = datetime.now(UTC) - store.gauge_ttl - timedelta(seconds=1)
    for source, when, value in (("a/x", old, 9.0), ("b/x", datetime.now(UTC), 2.0)):
        store.add(LoadReport(namespace=NS, model_deployment="llama", source=source,
                             timestamp=when, inflight_requests=value))  # fmt: skip
    (inflight,) = store.metric_values(NS, "clawdbot_inflight_requests")
    assert inflight.value == 2.0


async def test_load_reports_feed_the_store_as_deltas(operator: Operator) -> None:
    pool = LocalPool(SidecarConfig.model_validate({"endpoints": [
        {"url": "http://127.1.0.5:8000/v1", "model": "llama-3-8b", "revision": "2",
         "deployment": "llama"}]}).endpoints)  # fmt: skip
    state = pool.states[0]
    for _ in range(3):  # 3 in flight throughout
        LocalPool.begin(state)
    state.requests, state.errors = 10, 1
    state.latencies_s.extend([0.1] * 19 + [0.9])
    pod = PodIdentity(NS, "chat-1")

    async def reports() -> AsyncIterator[pb.LoadReport]:
        yield load_report(pod, pool)
        state.requests, state.errors = 15, 1
        await asyncio.sleep(0.2)  # long enough that millisecond timestamps barely matter
        yield load_report(pod, pool)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{operator.port}") as channel:
        ack = await pb_grpc.DiscoveryStub(channel).ReportLoad(
            reports(), metadata=(("authorization", "Bearer good"),)
        )
    assert ack.interval_seconds > 0
    health = operator.store.revision_health(NS, "llama", 2, datetime.now(UTC))
    assert health is not None
    assert (health.requests, health.errors) == (15, 1)  # 10 + 5: deltas, not totals
    assert health.p95_latency_ms == pytest.approx(900.0)
    (inflight,) = operator.store.metric_values(NS, "clawdbot_inflight_requests")
    assert inflight.value == pytest.approx(3, rel=0.05)


def _report(pod: str, requests: int) -> pb.LoadReport:
    load = pb.EndpointLoad(url="http://127.1.0.5:8000/v1", model_deployment="llama", revision=2,
                           requests=requests, in_flight=1)  # fmt: skip
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    return pb.LoadReport(pod_namespace=NS, pod_name=pod, unix_ms=now_ms, endpoints=[load])


def _relay(name: str, token_file: Path, peers: list[str]) -> PeerRelay:
    async def list_peers() -> list[str]:
        return peers

    return PeerRelay(name, list_peers, grpc.aio.insecure_channel, token_file, refresh_s=0.1)


async def _send_reports(port: int, token: str, *reports: pb.LoadReport,
                        relay_from: str | None = None) -> None:  # fmt: skip
    metadata = [("authorization", f"Bearer {token}")]
    if relay_from:
        metadata.append(("x-clawdbot-relay", relay_from))

    async def stream() -> AsyncIterator[pb.LoadReport]:
        for r in reports:
            yield r

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await pb_grpc.DiscoveryStub(channel).ReportLoad(stream(), metadata=tuple(metadata))


async def _wait(check: Any, what: str) -> None:
    for _ in range(100):  # bounded: 5 s
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} did not happen within 5 s")


async def test_replicas_relay_sidecar_reports_to_each_other_once(tmp_path: Path) -> None:
    """A sidecar's report reaches one replica; the other replica's metrics API and rollback
    check see it too, and nothing loops back."""
    (tmp_path / "a").write_text("operator-a")
    (tmp_path / "b").write_text("operator-b")
    a_port, b_port = free_port(), free_port()
    a = Operator(_relay("clawdbot-a", tmp_path / "a", [f"127.0.0.1:{b_port}"]))
    b = Operator(_relay("clawdbot-b", tmp_path / "b", [f"127.0.0.1:{a_port}"]))
    a.port, b.port = a_port, b_port
    for op in (a, b):
        seed(op.state)
        await op.start()
        assert op.relay is not None
        op.relay.start()
    try:
        await _wait(lambda: a.relay and a.relay.peers and b.relay and b.relay.peers, "peering")
        await _send_reports(a.port, "good", _report("chat-1", 10))

        def seen_by_b() -> bool:
            h = b.store.revision_health(NS, "llama", 2, datetime.now(UTC))
            return h is not None and h.requests == 10

        await _wait(seen_by_b, "the report relayed to the other replica")
        (inflight,) = b.store.metric_values(NS, "clawdbot_inflight_requests")
        assert inflight.value == 1
        await asyncio.sleep(0.3)  # time for a (wrong) relay back to A to show
        health_a = a.store.revision_health(NS, "llama", 2, datetime.now(UTC))
        assert health_a is not None and health_a.requests == 10  # once, not relayed back
        assert b.relay is not None and b.relay.relayed == 0
        assert a.relay is not None and a.relay.relayed == 1
    finally:
        for op in (a, b):
            assert op.relay is not None
            await op.relay.stop()
            await op.stop()


async def test_relayed_reports_need_the_operators_own_account(operator: Operator) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _send_reports(operator.port, "good", _report("chat-1", 5), relay_from="chat-1")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "operator's own service account" in (err.value.details() or "")
    assert operator.store.revision_health(NS, "llama", 2, datetime.now(UTC)) is None
    # A peer may relay another pod's report (it was authorized where it arrived).
    await _send_reports(operator.port, "operator-b", _report("chat-9", 5), relay_from="b")
    health = operator.store.revision_health(NS, "llama", 2, datetime.now(UTC))
    assert health is not None and health.requests == 5


async def test_a_dead_peer_costs_a_bounded_queue(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("operator-a")
    relay = _relay("clawdbot-a", tmp_path / "t", [f"127.0.0.1:{free_port()}"])  # nobody there
    relay.queue_size = 3
    await relay.refresh()
    try:
        for i in range(10):
            relay.offer(_report("chat-1", i))
        assert relay.dropped >= 6  # the sender may have taken one or two before failing
    finally:
        await relay.stop()


def test_own_identity_comes_from_the_token_claims() -> None:
    claims = {"kubernetes.io": {"namespace": "clawdbot-system",
                                "serviceaccount": {"name": "clawdbot", "uid": "1"}}}  # fmt: skip
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert service_account_of(f"e30.{payload}.sig") == ("clawdbot-system", "clawdbot")
    assert service_account_of("not-a-jwt") is None


# -- load reports are a pod's word, taken with care -----------------------------------------

LLAMA_URL = "http://127.1.0.5:8000/v1"


async def _report_stream(port: int, *reports: pb.LoadReport, gap_s: float = 0.0) -> None:
    async def stream() -> AsyncIterator[pb.LoadReport]:
        for i, r in enumerate(reports):
            if i and gap_s:
                await asyncio.sleep(gap_s)
            yield r

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await pb_grpc.DiscoveryStub(channel).ReportLoad(
            stream(), metadata=(("authorization", "Bearer good"),)
        )


def _load(url: str = LLAMA_URL, **fields: Any) -> pb.LoadReport:
    base: dict[str, Any] = {"model_deployment": "llama", "revision": 2, "requests": 10}
    load = pb.EndpointLoad(url=url, **{**base, **fields})
    return pb.LoadReport(pod_namespace=NS, pod_name="chat-1", endpoints=[load])


async def test_a_report_dated_in_the_future_is_stamped_when_received(operator: Operator) -> None:
    """Its own timestamp would keep the gauge alive (and the autoscaler up) for days."""
    future_ms = int((datetime.now(UTC) + timedelta(days=30)).timestamp() * 1000)
    report = _load(in_flight=40)
    report.unix_ms = future_ms
    before = datetime.now(UTC)
    await _report_stream(operator.port, report)
    (value,) = operator.store.metric_values(NS, "clawdbot_inflight_requests")
    assert before <= value.timestamp <= datetime.now(UTC)
    later = datetime.now(UTC) + operator.store.gauge_ttl + timedelta(seconds=1)
    assert operator.store.metric_values(NS, "clawdbot_inflight_requests", later) == []


async def test_a_report_stream_outlives_an_api_server_outage(operator: Operator) -> None:
    """While the pod can't be read (the API server restarting), reports on the same stream
    count against the endpoints last resolved for it, and the stream goes on: ended, the
    sidecar's reports would stop until its subscription reconnects."""

    async def reports() -> AsyncIterator[pb.LoadReport]:
        for requests, down in ((10, False), (25, True), (40, True), (50, False)):
            operator.api_down = down
            yield _load(requests=requests)
            await asyncio.sleep(0.2)  # read by the server before the API changes again

    async with grpc.aio.insecure_channel(f"127.0.0.1:{operator.port}") as channel:
        ack = await pb_grpc.DiscoveryStub(channel).ReportLoad(
            reports(), metadata=(("authorization", "Bearer good"),)
        )
    assert ack.interval_seconds > 0
    health = operator.store.revision_health(NS, "llama", 2, datetime.now(UTC))
    assert health is not None and health.requests == 50  # every report counted


async def test_a_first_report_during_an_outage_waits_for_the_next(operator: Operator) -> None:
    operator.api_down = True

    async def reports() -> AsyncIterator[pb.LoadReport]:
        yield _load(requests=10)  # its endpoints unknown: not counted, not fatal
        await asyncio.sleep(0.2)  # read by the server before the API comes back
        operator.api_down = False
        yield _load(requests=30)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{operator.port}") as channel:
        await pb_grpc.DiscoveryStub(channel).ReportLoad(
            reports(), metadata=(("authorization", "Bearer good"),)
        )
    health = operator.store.revision_health(NS, "llama", 2, datetime.now(UTC))
    assert health is not None and health.requests == 30


async def test_a_pod_reports_only_on_its_own_endpoints_under_their_real_names(
    operator: Operator,
) -> None:
    """The ModelDeployment and revision come from the operator's own view of the endpoint;
    endpoints the pod was not given (another model's, made-up ones) are dropped."""
    lying = _load(model_deployment="victim", revision=7, requests=30, errors=30)
    lying.endpoints.append(
        pb.EndpointLoad(url="http://127.9.9.9:8000/v1", model_deployment="victim", revision=7,
                        requests=1000, errors=1000, in_flight=500)
    )  # fmt: skip
    await _report_stream(operator.port, lying)
    now = datetime.now(UTC)
    assert operator.store.revision_health(NS, "victim", 7, now) is None
    health = operator.store.revision_health(NS, "llama", 2, now)
    assert health is not None and (health.requests, health.errors) == (30, 30)
    assert [
        v.labels["clawdbot.io/model-deployment"]
        for v in operator.store.metric_values(NS, "clawdbot_inflight_requests")
    ] == ["llama"]
    assert operator.store.sources == 1


async def test_absurd_counters_are_clamped(operator: Operator) -> None:
    await _report_stream(
        operator.port,
        _load(requests=10, errors=0),
        _load(requests=2**62, errors=2**63 - 1, in_flight=10**9, in_flight_seconds=1e18,
              latency_p95_ms=1e30),
        gap_s=0.2,
    )  # fmt: skip
    health = operator.store.revision_health(NS, "llama", 2, datetime.now(UTC))
    assert health is not None
    assert health.errors <= health.requests <= 10 + 10_000 * 5  # bounded by time, not by 2**62
    assert health.p95_latency_ms is not None and health.p95_latency_ms <= 3_600_000
    (inflight,) = operator.store.metric_values(NS, "clawdbot_inflight_requests")
    assert inflight.value <= 1024


async def test_a_flood_of_reports_costs_bounded_memory(operator: Operator) -> None:
    reports = [_load(requests=i) for i in range(3000)]
    await _report_stream(operator.port, *reports)
    assert len(operator.store) <= 2  # merged into one per 10 s bucket
    assert operator.store.sources == 1


def test_the_stores_sources_and_the_counters_are_bounded() -> None:
    store = LoadReportStore(max_sources=100)
    now = datetime.now(UTC)
    for i in range(1000):
        store.add(LoadReport(NS, "llama", f"pod-{i}/x", now, requests=1))
    assert store.sources == 100
    intake = ReportIntake(LoadReportStore(), max_counters=50)
    endpoints = {LLAMA_URL: EndpointInfo(LLAMA_URL, "llama-3-8b", "llama", 2)}
    for i in range(500):
        report = _load()
        report.pod_name = f"pod-{i}"
        intake.record(report, endpoints)
    assert intake.counters == 50


def test_one_pod_alone_cannot_fail_a_revision_the_others_see_healthy() -> None:
    """One pod is one vote: however many errors it claims, the typical client decides."""
    store = LoadReportStore()
    now = datetime.now(UTC)
    for i in range(5):
        store.add(LoadReport(NS, "llama", f"ok-{i}/x", now, revision=2, requests=40,
                             p95_latency_ms=100 + i, reporter=f"ok-{i}"))  # fmt: skip
    store.add(LoadReport(NS, "llama", "liar/x", now, revision=2, requests=100_000,
                         errors=100_000, p95_latency_ms=600_000, reporter="liar"))  # fmt: skip
    health = store.revision_health(NS, "llama", 2, now)
    assert health is not None and health.error_rate == 0.0
    assert health.p95_latency_ms == 102
    # Nor can it bring a latency figure of its own where the others measured none.
    quiet = LoadReportStore()
    for name in ("a", "b", "c"):
        quiet.add(LoadReport(NS, "llama", f"{name}/x", now, revision=2, requests=40,
                             reporter=name))  # fmt: skip
    quiet.add(LoadReport(NS, "llama", "liar/x", now, revision=2, requests=40,
                         p95_latency_ms=600_000, reporter="liar"))  # fmt: skip
    judged = quiet.revision_health(NS, "llama", 2, now)
    assert judged is not None and judged.p95_latency_ms is None
    # ...while a lone client that sees errors is believed, as before.
    alone = LoadReportStore()
    alone.add(LoadReport(NS, "llama", "c/x", now, revision=2, requests=30, errors=30,
                         reporter="c"))  # fmt: skip
    lone = alone.revision_health(NS, "llama", 2, now)
    assert lone is not None and lone.error_rate == 1.0


# -- the stream costs what a change is worth, and ends when it may not go on --------------


class CountingSecrets:
    """The API's Secrets, counting the reads that reach it."""

    def __init__(self, value: str = "sk-1") -> None:
        self.value = value
        self.reads = 0

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        await asyncio.sleep(0)  # a real read yields: concurrent askers overlap
        encoded = base64.b64encode(self.value.encode()).decode()
        return {"data": {"api-key": encoded}}


class StatusKube:
    """What the routing controller reads and writes, for the scale test."""

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        return {"metadata": {"name": name}}

    async def list(self, api_version: str, kind: str, namespace: str | None,
                   label_selector: str = "") -> list[Any]:  # fmt: skip
        return []

    async def patch_status(self, *args: Any) -> dict[str, Any]:
        return {}


class ManyPods(Reviewer):
    """Token "pod-N" is pod chat-N's."""

    async def review(self, token: str, *, fresh: bool = False) -> Identity | None:
        return Identity(NS, "chat", token.replace("pod-", "chat-"))


async def test_twenty_sidecars_and_fifty_unrelated_pod_events_read_one_secret() -> None:
    """Every sidecar's snapshot carries its policy's cloud key: a GET per subscriber per
    change was 1,050 reads here (1,000 by the stream, 50 by status). Now each Secret is
    read once per TTL, and a pod no subscriber's policy names wakes no subscriber."""
    secrets = CountingSecrets()
    cache = SecretCache(secrets.read)
    state = DiscoveryState()

    async def get_pod(ns: str, name: str) -> Mapping[str, Any] | None:
        return {"metadata": {"name": name, "namespace": ns, "labels": {"app": "chat"}},
                "spec": {"serviceAccountName": "chat"}}  # fmt: skip

    servicer = DiscoveryServicer(state, ManyPods(), get_pod, LoadReportStore(), get_secret=cache)
    server = grpc.aio.server()
    add_to_server(server, servicer)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    controller = RoutingPolicyController(StatusKube(), state, get_secret=cache)
    registry = kopf.OperatorRegistry()
    controller.register(registry)
    handlers = {h.id: h for h in registry._watching.get_all_handlers()}
    spec = {"podSelector": {"matchLabels": {"app": "chat"}}, "localModels": [{"name": "llama"}],
            "cloud": {"baseURL": "https://llm.example.com/v1", "model": "m",
                      "apiKeySecretRef": {"name": "cloud", "key": "api-key"}}}  # fmt: skip
    policy = {"metadata": {"name": "chat", "namespace": NS, "generation": 1}, "spec": spec}
    indexes: dict[str, Any] = {"routing_policies": {NS: [policy]}, "injected_pods": {NS: []}}
    await handlers["policies"].fn(body=kopf.Body(policy), type="ADDED", **indexes)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.DiscoveryStub(channel)
            streams = [
                stub.Subscribe(pb.SubscribeRequest(pod_namespace=NS, pod_name=f"chat-{i}"),
                               metadata=(("authorization", f"Bearer pod-{i}"),))
                for i in range(20)
            ]  # fmt: skip
            for stream in streams:
                assert (await next_snapshot(stream)).cloud_api_key == "sk-1"
            reads, wakeups = secrets.reads, state.wakeups
            for n in range(50):  # a pod of a ModelDeployment no policy here names
                pod = {"metadata": {"name": "mistral-0", "namespace": NS,
                                    "resourceVersion": str(n),
                                    "labels": {"clawdbot.io/model-deployment": "mistral"}},
                       "status": {"podIP": "127.1.0.9",
                                  "conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip
                await handlers["model-pods"].fn(body=kopf.Body(pod), type="MODIFIED", **indexes)
            await asyncio.sleep(0.2)
            print(
                f"Secret reads for 20 sidecars x 50 unrelated pod events: "
                f"{secrets.reads - reads} (subscribers woken: {state.wakeups - wakeups})"
            )
            assert secrets.reads - reads == 0 and state.wakeups == wakeups
            assert secrets.reads == 1  # the first snapshot's, shared by all twenty
            for stream in streams:
                stream.cancel()
    finally:
        await server.stop(grace=None)


async def test_the_secret_cache_reads_once_per_ttl_and_keeps_a_key_through_an_outage() -> None:
    secrets = CountingSecrets()
    clock = [0.0]
    cache = SecretCache(secrets.read, ttl_s=30, monotonic=lambda: clock[0])
    values = await asyncio.gather(*(cache(NS, "cloud", "api-key") for _ in range(10)))
    assert values == ["sk-1"] * 10 and secrets.reads == 1
    secrets.value = "sk-2"
    clock[0] = 29.0
    assert await cache(NS, "cloud", "api-key") == "sk-1"
    clock[0] = 31.0
    assert await cache(NS, "cloud", "api-key") == "sk-2" and secrets.reads == 2

    async def away(namespace: str, name: str) -> dict[str, Any] | None:
        raise OSError("connection refused")

    cache._read = away
    clock[0] = 62.0
    assert await cache(NS, "cloud", "api-key") == "sk-2"  # the last known key, not none


@pytest.fixture
async def subscribed(operator: Operator) -> AsyncIterator[Any]:
    """chat-1's open stream, its first snapshot read."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{operator.port}") as channel:
        stream = pb_grpc.DiscoveryStub(channel).Subscribe(
            pb.SubscribeRequest(pod_namespace=NS, pod_name="chat-1"),
            metadata=(("authorization", "Bearer good"),),
        )
        assert (await next_snapshot(stream)).policy_name == "chat"
        yield stream
        stream.cancel()


async def _ended(stream: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        for _ in range(10):  # bounded: snapshots may still come before the end
            await next_snapshot(stream)
    return err.value


async def test_the_stream_ends_when_the_pod_is_deleted(operator: Operator, subscribed: Any) -> None:
    operator.state.set_subscribed_pod(NS, "chat-1", None)
    err = await _ended(subscribed)
    assert err.code() == grpc.StatusCode.NOT_FOUND and "deleted" in (err.details() or "")


async def test_the_stream_ends_when_the_pod_is_relabelled_out_of_its_policy(
    operator: Operator, subscribed: Any
) -> None:
    relabelled = {**CHAT_POD, "metadata": {**CHAT_POD["metadata"], "labels": {"app": "other"}}}
    operator.state.set_subscribed_pod(NS, "chat-1", relabelled)
    err = await _ended(subscribed)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "relabelled" in (err.details() or "") and "'chat'" in (err.details() or "")


async def test_the_stream_ends_when_the_token_expires() -> None:
    """Authorised once is not authorised for good: at the token's exp the review is asked
    again, and an expired (or, for a deleted pod, rejected) token ends the stream."""
    expires = time.time() + 1.0

    class Expiring(Reviewer):
        async def review(self, token: str, *, fresh: bool = False) -> Identity | None:
            return Identity(NS, "chat", "chat-1", expires_at=expires)

    op = Operator()
    op.reviewer = Expiring()
    seed(op.state)
    await op.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{op.port}") as channel:
            stream = pb_grpc.DiscoveryStub(channel).Subscribe(
                pb.SubscribeRequest(pod_namespace=NS, pod_name="chat-1"),
                metadata=(("authorization", "Bearer good"),),
            )
            await next_snapshot(stream)
            err = await _ended(stream)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "expired" in (err.details() or "")
            assert time.time() >= expires
    finally:
        await op.stop()


def test_a_tokens_expiry_comes_from_its_exp_claim() -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"exp": 1_900_000_000}).encode())
    token = f"e30.{payload.rstrip(b'=').decode()}.sig"
    assert token_expiry(token) == 1_900_000_000
    assert token_expiry("opaque") is None


# -- the Redis password comes from a Secret, like the cloud key ---------------------------


@contextlib.contextmanager
def redis_with_password(password: str, workdir: Path) -> Iterator[str]:
    """A throwaway redis-server on loopback that requires ``password``; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", str(workdir), "--requirepass", password]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:  # bounded: a fresh redis-server listens within milliseconds
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "no redis-server"
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=5)


async def test_the_redis_password_reaches_the_sidecars_cache_from_its_secret(
    tmp_path: Path,
) -> None:
    """Only the Secret holds the password: the stream sends it (TLS only, as the cloud key),
    the sidecar's config carries it (never dumped), and its Redis client logs in with it."""
    with redis_with_password("r3dis-pass", tmp_path) as url:
        op = Operator(secrets={("redis", "password"): "r3dis-pass"})
        policy = RoutingPolicySpec.model_validate({
            "podSelector": {"matchLabels": {"app": "chat"}},
            "cache": {"enabled": True, "backend": "redis", "redisURL": url,
                      "redisPasswordSecretRef": {"name": "redis", "key": "password"}},
        })  # fmt: skip
        op.state.set_policy(NS, "chat", policy)
        await op.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{op.port}") as channel:
                stream = pb_grpc.DiscoveryStub(channel).Subscribe(
                    pb.SubscribeRequest(pod_namespace=NS, pod_name="chat-1"),
                    metadata=(("authorization", "Bearer good"),),
                )
                snapshot = await next_snapshot(stream)
                stream.cancel()
        finally:
            await op.stop()
    assert snapshot.cache_redis_password == "r3dis-pass"
    assert "r3dis-pass" not in snapshot.policy_spec_json
    config = config_from_snapshot(snapshot, SidecarConfig())
    assert config.cache_redis_password == "r3dis-pass"
    assert "r3dis-pass" not in repr(config) and "r3dis-pass" not in config.model_dump_json()
    with redis_with_password("r3dis-pass", tmp_path) as url:
        cache_spec = config.policy.cache.model_copy(update={"redis_url": url})
        cache = build_cache(cache_spec, redis_password=config.cache_redis_password)
        assert isinstance(cache, RedisCache)
        await cache.set("k", CachedResponse({"answer": 42}, "local", time.time()))
        stored = await cache.get("k")
        assert stored is not None and stored.body == {"answer": 42} and cache.errors == 0
        await cache.close()
        # Without it, the same server refuses the client (the cache then answers misses).
        anonymous = build_cache(cache_spec)
        assert isinstance(anonymous, RedisCache)
        assert await anonymous.get("k") is None and anonymous.errors == 1
        await anonymous.close()


class EventKube(StatusKube):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.patched: list[dict[str, Any]] = []

    async def patch_status(self, *args: Any) -> dict[str, Any]:
        self.patched.append(args[-1])
        return {}

    async def post_event(self, involved: Any, type_: str, reason: str, message: str) -> None:
        assert involved["kind"] == "RoutingPolicy"
        self.events.append((type_, reason, message))


async def test_a_password_inline_in_the_redis_url_is_warned_about_once_per_generation() -> None:
    kube = EventKube()

    async def secret(ns: str, name: str, key: str) -> str | None:
        return None

    controller = RoutingPolicyController(kube, DiscoveryState(), get_secret=secret)
    spec = {"cache": {"enabled": True, "backend": "redis",
                      "redisURL": "redis://:hunter2@redis.example:6379/0"}}  # fmt: skip
    body: dict[str, Any] = {"metadata": {"name": "p", "namespace": NS, "generation": 1},
                            "spec": spec}  # fmt: skip
    await controller.sync_policy(body)
    body["status"] = kube.patched[-1]  # what the API server now holds
    await controller.sync_policy(body)
    assert [(t, r) for t, r, _ in kube.events] == [("Warning", "RedisPasswordInSpec")]
    assert "hunter2" not in kube.events[0][2] and "redisPasswordSecretRef" in kube.events[0][2]
    # The password moved to a Secret: a new generation, no warning.
    body["metadata"]["generation"] = 2
    body["spec"] = {"cache": {"enabled": True, "backend": "redis",
                              "redisURL": "redis://redis.example:6379/0",
                              "redisPasswordSecretRef": {"name": "r", "key": "p"}}}  # fmt: skip
    await controller.sync_policy(body)
    assert len(kube.events) == 1
    ready = next(c for c in kube.patched[-1]["conditions"] if c["type"] == "Ready")
    assert "cache.redisPasswordSecretRef: Secret r key p not found" in ready["message"]


# -- a spec the sidecars can't apply is reported, never sent -------------------------------

BAD_PATTERN = "(?<=a+)T-[0-9]+"  # a look-behind of variable width: Python's re refuses it


class RecordingKube(StatusKube):
    def __init__(self) -> None:
        self.patched: list[dict[str, Any]] = []

    async def patch_status(self, *args: Any) -> dict[str, Any]:
        self.patched.append(args[-1])
        return {}


async def no_secret(namespace: str, name: str, key: str) -> str | None:
    return None


def policy_body(**redaction: Any) -> dict[str, Any]:
    spec = {**POLICY.model_dump(by_alias=True, exclude_none=True), "redaction": redaction,
            "defaultTarget": "local"}  # fmt: skip
    return {"metadata": {"name": "chat", "namespace": NS, "generation": 2}, "spec": spec}


async def nothing_within(stream: Any, seconds: float) -> asyncio.Future[Any]:
    """Assert no message arrives for ``seconds``; the pending read, to await later."""
    read = asyncio.ensure_future(stream.read())
    done, _ = await asyncio.wait({read}, timeout=seconds)
    assert not done, f"got {read.result()!r}"
    return read


def ready_of(kube: RecordingKube) -> dict[str, Any]:
    return next(c for c in kube.patched[-1]["conditions"] if c["type"] == "Ready")


async def test_a_spec_its_sidecars_cant_apply_is_reported_and_not_sent(
    operator: Operator, subscribed: Any
) -> None:
    kube = RecordingKube()
    controller = RoutingPolicyController(kube, operator.state, get_secret=no_secret)
    await controller.sync_policy(policy_body(custom=[{"name": "TICKET", "pattern": BAD_PATTERN}]))
    ready = ready_of(kube)
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"].startswith("spec.redaction.custom[0].pattern: custom entity 'TICKET'")
    assert "its sidecars keep its last valid spec" in ready["message"]
    assert operator.state.policies[NS]["chat"] == POLICY  # the last valid spec stays
    pending = await nothing_within(subscribed, 0.5)  # nothing goes down the stream
    # Fixed: in force and sent.
    await controller.sync_policy(policy_body(custom=[{"name": "TICKET", "pattern": "T-[0-9]+"}]))
    assert ready_of(kube)["status"] == "True"
    snapshot = await asyncio.wait_for(pending, 5)
    fixed = RoutingPolicySpec.model_validate_json(snapshot.policy_spec_json)
    assert [c.name for c in fixed.redaction.custom] == ["TICKET"]


async def test_a_policy_never_valid_holds_its_pods_sidecars() -> None:
    """With no valid spec to fall back on (a new policy, or an operator that restarted),
    the pods it applies to get nothing, rather than another policy or none."""
    op = Operator()
    kube = RecordingKube()
    controller = RoutingPolicyController(kube, op.state, get_secret=no_secret)
    await controller.sync_policy(policy_body(perEntityMode={"TICKET": "block"}))
    ready = ready_of(kube)
    assert ready["reason"] == "InvalidSpec"
    assert "spec.redaction: perEntityMode: unknown entity 'TICKET'" in ready["message"]
    assert "get no policy until it is fixed" in ready["message"]
    await op.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{op.port}") as channel:
            stream = pb_grpc.DiscoveryStub(channel).Subscribe(
                pb.SubscribeRequest(pod_namespace=NS, pod_name="chat-1"),
                metadata=(("authorization", "Bearer good"),),
            )
            pending = await nothing_within(stream, 0.5)
            await controller.sync_policy(policy_body())
            assert (await asyncio.wait_for(pending, 5)).policy_name == "chat"
            stream.cancel()
    finally:
        await op.stop()
