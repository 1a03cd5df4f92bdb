"""The routing plane's status writing (RoutingPolicy Ready and Degraded) and its own metrics."""

from __future__ import annotations

from typing import Any

import grpc
import kopf
import pytest
from prometheus_client import CollectorRegistry

from clawdbot_api.v1alpha1 import RoutingPolicySpec
from clawdbot_operator.controllers.routingpolicy import RoutingPolicyController
from clawdbot_operator.discovery.relay import PeerRelay, RelayCollector
from clawdbot_operator.discovery.server import DiscoveryState
from clawdbot_operator.policystatus import models_without_endpoints, policy_conditions

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def spec(**extra: Any) -> RoutingPolicySpec:
    return RoutingPolicySpec.model_validate(
        {"localModels": [{"name": "llama"}, {"name": "qwen"}],
         "cloud": {"baseURL": "https://llm.example.com/v1", "model": "big"}, **extra}
    )  # fmt: skip


def by_type(conditions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conditions}


def test_all_endpoints_ready() -> None:
    s = spec()
    idle = models_without_endpoints(s, ["qwen", "llama", "llama"])
    got = by_type(policy_conditions(spec=s, problems=[], idle_models=idle, generation=3,
                                    previous=[], now=T0))  # fmt: skip
    assert got["Ready"]["status"] == "True" and got["Ready"]["reason"] == "Resolved"
    assert got["Degraded"]["status"] == "False"
    assert all(c["observedGeneration"] == 3 and c["lastTransitionTime"] == T0
               for c in got.values())  # fmt: skip


def test_a_model_without_endpoints_degrades_and_names_it_and_the_fallback() -> None:
    s = spec()
    idle = models_without_endpoints(s, ["llama"])
    assert idle == ["qwen"]
    got = by_type(policy_conditions(spec=s, problems=[], idle_models=idle, generation=1,
                                    previous=[], now=T0))  # fmt: skip
    degraded = got["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "NoReadyEndpoints")
    assert "qwen" in degraded["message"] and "cloud" in degraded["message"]
    assert got["Ready"]["status"] == "True"  # still in force

    no_fallback = spec(fallback={"localToCloud": False})
    got = by_type(policy_conditions(spec=no_fallback, problems=[], idle_models=idle,
                                    generation=1, previous=[], now=T0))  # fmt: skip
    assert "fail" in got["Degraded"]["message"]


def test_not_ready_makes_degraded_unknown() -> None:
    got = by_type(policy_conditions(spec=spec(), problems=["localModels: ModelDeployment qwen "
                                    "not found"], idle_models=["qwen"], generation=1,
                                    previous=[], now=T0))  # fmt: skip
    assert got["Ready"]["status"] == "False" and "qwen" in got["Ready"]["message"]
    assert got["Degraded"]["status"] == "Unknown"


def test_transition_time_moves_only_when_the_status_changes() -> None:
    s = spec()
    first = policy_conditions(spec=s, problems=[], idle_models=[], generation=1, previous=[],
                              now=T0)  # fmt: skip
    same = by_type(policy_conditions(spec=s, problems=[], idle_models=[], generation=2,
                                     previous=first, now=T1))  # fmt: skip
    assert same["Ready"]["lastTransitionTime"] == T0
    assert same["Degraded"]["lastTransitionTime"] == T0
    changed = by_type(policy_conditions(spec=s, problems=[], idle_models=["llama"],
                                        generation=2, previous=first, now=T1))  # fmt: skip
    assert changed["Ready"]["lastTransitionTime"] == T0
    assert changed["Degraded"]["lastTransitionTime"] == T1


async def no_secret(namespace: str, name: str, key: str) -> str | None:
    return None


class FakeKube:
    """Every ModelDeployment exists, no pods; records status patches."""

    def __init__(self) -> None:
        self.patched: list[dict[str, Any]] = []

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        return {"metadata": {"name": name}}

    async def list(self, api_version: str, kind: str, namespace: str | None,
                   label_selector: str = "") -> list[Any]:  # fmt: skip
        return []

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.patched.append(status)
        return {}


@pytest.mark.parametrize(
    ("path", "ready"),
    [
        ("/var/log/clawdbot/audit.jsonl", True),
        ("/var/log/clawdbot/../audit.jsonl", False),  # normalised: outside the emptyDir
        ("/data/audit.jsonl", False),  # a read-only root filesystem in an injected sidecar
        (None, False),
    ],
)
async def test_a_file_audit_sink_must_be_in_the_sidecars_audit_volume(
    path: str | None, ready: bool
) -> None:
    kube = FakeKube()
    controller = RoutingPolicyController(kube, DiscoveryState(), get_secret=no_secret)
    spec = {"localModels": [{"name": "llama"}], "audit": {"sink": "file", "path": path}}
    body = {"metadata": {"name": "p", "namespace": "ns", "generation": 1}, "spec": spec}
    await controller.sync_policy(body)
    (status,) = kube.patched
    got = by_type(status["conditions"])["Ready"]
    assert (got["status"] == "True") is ready, got
    if not ready:
        assert "audit.path" in got["message"] and "/var/log/clawdbot/" in got["message"]


async def test_the_relay_counters_are_scraped_from_the_operators_registry(tmp_path: Any) -> None:
    registry = CollectorRegistry()
    relay: PeerRelay | None = None
    registry.register(RelayCollector(lambda: relay))
    assert registry.get_sample_value("clawdbot_operator_load_reports_relayed_total") == 0
    (tmp_path / "token").write_text("t")

    async def no_peers() -> list[str]:
        return []

    relay = PeerRelay("me", no_peers, grpc.aio.insecure_channel, tmp_path / "token")
    relay.relayed, relay.dropped = 7, 2
    assert registry.get_sample_value("clawdbot_operator_load_reports_relayed_total") == 7
    assert registry.get_sample_value("clawdbot_operator_load_reports_relay_dropped_total") == 2
    assert registry.get_sample_value("clawdbot_operator_relay_peers") == 0


class CountingKube(FakeKube):
    """FakeKube that counts LISTs (what kopf's indexes spare)."""

    def __init__(self) -> None:
        super().__init__()
        self.lists: list[str] = []

    async def list(self, api_version: str, kind: str, namespace: str | None,
                   label_selector: str = "") -> list[Any]:  # fmt: skip
        self.lists.append(kind)
        return []


async def test_pod_events_refresh_status_from_kopfs_indexes_without_listing() -> None:
    """A model pod's event recomputes its namespace's policies from the RoutingPolicy and
    injected-pod indexes kopf keeps; the API is not listed."""
    kube = CountingKube()
    controller = RoutingPolicyController(kube, DiscoveryState(), get_secret=no_secret)
    registry = kopf.OperatorRegistry()
    controller.register(registry)
    handlers = {h.id: h for h in registry._watching.get_all_handlers()}
    policy = {"metadata": {"name": "p", "namespace": "ns", "generation": 1},
              "spec": {"podSelector": {"matchLabels": {"app": "chat"}},
                       "localModels": [{"name": "llama"}]}}  # fmt: skip
    injected = {"metadata": {"name": "chat-1", "namespace": "ns", "labels": {"app": "chat"},
                             "annotations": {"clawdbot.io/injected": "true"}}}  # fmt: skip
    # Each index as kopf fills it (from its own function) and hands it over (by its id).
    indexes: dict[str, dict[str, list[Any]]] = {}
    for indexer in registry._indexing.get_all_handlers():
        source = policy if "polic" in indexer.id else injected
        for key, value in indexer.fn(body=kopf.Body(source)).items():
            indexes.setdefault(indexer.id, {}).setdefault(key, []).append(value)
    assert set(indexes) == {"routing_policies", "injected_pods"}
    await handlers["policies"].fn(body=kopf.Body(policy), type="ADDED", **indexes)
    pod = {"metadata": {"name": "llama-a", "namespace": "ns",
                        "labels": {"clawdbot.io/model-deployment": "llama"}}}  # fmt: skip
    await handlers["model-pods"].fn(body=kopf.Body(pod), type="ADDED", **indexes)
    assert kube.lists == []
    assert [s["matchedPods"] for s in kube.patched] == [1, 1]


async def test_a_replica_set_seen_after_its_pods_refreshes_the_endpoint_count() -> None:
    """Watches deliver in any order: a pod Ready before its ReplicaSet's event counts (in
    status as for the sidecars) as soon as the ReplicaSet is known."""
    kube = FakeKube()
    state = DiscoveryState()
    controller = RoutingPolicyController(kube, state, get_secret=no_secret)
    registry = kopf.OperatorRegistry()
    controller.register(registry)
    handlers = {h.id: h for h in registry._watching.get_all_handlers()}
    policy = {"metadata": {"name": "p", "namespace": "ns", "generation": 1},
              "spec": {"localModels": [{"name": "llama"}]}}  # fmt: skip
    indexes: dict[str, Any] = {"routing_policies": {"ns": [policy]}, "injected_pods": {}}

    def owned(kind: str, uid: str, owner_kind: str, owner: str, **extra: Any) -> kopf.Body:
        ref = {"kind": owner_kind, "uid": owner, "controller": True, "name": "llama"}
        meta = {"name": "llama", "namespace": "ns", "uid": uid, "ownerReferences": [ref],
                "labels": {"clawdbot.io/model-deployment": "llama"}}  # fmt: skip
        return kopf.Body({"kind": kind, "metadata": meta, **extra})

    md = {"metadata": {"name": "llama", "namespace": "ns", "uid": "md-1"},
          "spec": {"model": {"name": "llama-7b"}}}  # fmt: skip
    await handlers["served-name"].fn(body=kopf.Body(md), type="ADDED", **indexes)
    await handlers["model-deployments-deployments"].fn(
        body=owned("Deployment", "dep-1", "ModelDeployment", "md-1"), type="ADDED", **indexes
    )
    pod = owned("Pod", "pod-1", "ReplicaSet", "rs-1",
                status={"podIP": "127.1.0.5",
                        "conditions": [{"type": "Ready", "status": "True"}]})  # fmt: skip
    await handlers["model-pods"].fn(body=pod, type="ADDED", **indexes)
    assert kube.patched[-1]["readyEndpoints"] == 0  # its ReplicaSet is not known yet
    policy["status"] = kube.patched[-1]
    await handlers["model-replicasets"].fn(
        body=owned("ReplicaSet", "rs-1", "Deployment", "dep-1"), type="ADDED", **indexes
    )
    assert kube.patched[-1]["readyEndpoints"] == 1
