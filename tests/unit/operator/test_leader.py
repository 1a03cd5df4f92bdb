"""Leader election: the pure decision, the Lease specs, and electors racing on a fake API."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
import pytest

from clawdbot_operator.controllers.modeldeployment import register, resync
from clawdbot_operator.controllers.routingpolicy import RoutingPolicyController
from clawdbot_operator.discovery.server import DiscoveryState
from clawdbot_operator.kube import Kube, KubeError
from clawdbot_operator.leader import (
    Action,
    LeaderElector,
    decide,
    format_time,
    identity,
    next_spec,
    parse_time,
    released_spec,
)
from clawdbot_operator.reconciler import Reconciler

Obj = dict[str, Any]
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def lease(holder: str, renewed: datetime = T0, duration: int = 15, transitions: int = 0) -> Obj:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "op", "namespace": "ns", "resourceVersion": "1"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": format_time(renewed),
            "renewTime": format_time(renewed),
            "leaseTransitions": transitions,
        },
    }


# -- the pure decision ----------------------------------------------------------------------


def test_no_lease_is_acquired() -> None:
    assert decide(None, "me", T0).action is Action.ACQUIRE


def test_a_released_lease_is_acquired_at_once() -> None:
    decision = decide(lease(""), "me", T0 + timedelta(seconds=1), observed_for_s=0.0)
    assert (decision.action, decision.holder) == (Action.ACQUIRE, "")


def test_my_lease_is_renewed() -> None:
    assert decide(lease("me"), "me", T0 + timedelta(seconds=60)).action is Action.RENEW


def test_a_live_lease_of_another_is_waited_for() -> None:
    decision = decide(lease("other"), "me", T0 + timedelta(seconds=5))
    assert (decision.action, decision.holder) == (Action.WAIT, "other")
    assert decision.remaining_s == pytest.approx(10.0)


def test_an_expired_lease_of_another_is_taken_over() -> None:
    decision = decide(lease("other"), "me", T0 + timedelta(seconds=15))
    assert (decision.action, decision.holder) == (Action.ACQUIRE, "other")


def test_the_local_observation_wins_over_the_holders_clock() -> None:
    # The holder's clock runs 30 s behind: by renewTime the Lease looks long expired, but this
    # replica saw it change 3 s ago.
    late = lease("other", renewed=T0 - timedelta(seconds=30))
    assert decide(late, "me", T0, observed_for_s=3.0).action is Action.WAIT
    assert decide(late, "me", T0, observed_for_s=15.0).action is Action.ACQUIRE
    # ...and the holder's own leaseDurationSeconds counts.
    assert decide(lease("other", duration=40), "me", T0, observed_for_s=20.0).action is Action.WAIT


def test_time_round_trip() -> None:
    moment = datetime(2026, 11, 25, 15, 10, 56, 123456, tzinfo=UTC)
    assert format_time(moment) == "2026-11-25T15:10:56.123456Z"
    assert parse_time(format_time(moment)) == moment
    assert parse_time("") is None and parse_time("yesterday") is None and parse_time(None) is None


def test_specs_for_create_renew_takeover_and_release() -> None:
    created = next_spec(None, "me", T0)
    assert created == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 15,
        "acquireTime": format_time(T0),
        "renewTime": format_time(T0),
        "leaseTransitions": 0,
    }
    later = T0 + timedelta(seconds=2)
    renewed = next_spec(created, "me", later)
    assert renewed["acquireTime"] == format_time(T0)
    assert (renewed["renewTime"], renewed["leaseTransitions"]) == (format_time(later), 0)
    taken = next_spec(renewed, "you", later)
    assert (taken["holderIdentity"], taken["leaseTransitions"]) == ("you", 1)
    assert taken["acquireTime"] == format_time(later)
    released = released_spec(taken, later)
    assert (released["holderIdentity"], released["leaseTransitions"]) == ("", 1)


def test_identity_is_the_pod_name_and_a_random_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "clawdbot-7d9f-abcde")
    first, second = identity(), identity()
    assert first.startswith("clawdbot-7d9f-abcde_") and first != second


# -- electors on a fake API -----------------------------------------------------------------


class FakeLeases(Kube):
    """Leases with the API server's optimistic concurrency: every write bumps the
    resourceVersion, a create of an existing name or a PUT of a stale version is a 409."""

    def __init__(self) -> None:
        self.field_manager = "test"
        self.leases: dict[tuple[str, str], Obj] = {}
        self.version = 0
        self.fail_with: int | None = None  # answer every call with this status
        self.writes = 0

    def _check(self) -> None:
        if self.fail_with is not None:
            raise KubeError(self.fail_with, "injected failure")

    def _store(self, obj: Obj) -> Obj:
        self.version += 1
        self.writes += 1
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(self.version)
        meta = stored["metadata"]
        self.leases[meta["namespace"], meta["name"]] = stored
        return copy.deepcopy(stored)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        self._check()
        await asyncio.sleep(0)  # let a racing elector read too
        found = self.leases.get((namespace, name))
        return copy.deepcopy(found) if found else None

    async def create(self, manifest: Obj) -> Obj:
        self._check()
        meta = manifest["metadata"]
        if (meta["namespace"], meta["name"]) in self.leases:
            raise KubeError(409, "AlreadyExists")
        return self._store(manifest)

    async def replace(self, manifest: Obj) -> Obj:
        self._check()
        meta = manifest["metadata"]
        current = self.leases.get((meta["namespace"], meta["name"]))
        if current is None:
            raise KubeError(404, "NotFound")
        if meta.get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise KubeError(409, "Conflict: the object has been modified")
        return self._store(manifest)

    def holder(self) -> str:
        return str(self.leases["ns", "op"]["spec"]["holderIdentity"])


class Clock:
    """One fake time for the wall clock and the monotonic clock."""

    def __init__(self) -> None:
        self.t = 0.0

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.t)

    def mono(self) -> float:
        return self.t


def elector(kube: FakeLeases, clock: Clock, name: str) -> LeaderElector:
    return LeaderElector(kube, "ns", "op", name, clock=clock.wall, monotonic=clock.mono)


async def test_one_leader_and_a_follower_that_takes_over_when_it_stops_renewing() -> None:
    kube, clock = FakeLeases(), Clock()
    a, b = elector(kube, clock, "a"), elector(kube, clock, "b")
    events: list[str] = []
    a.on_started_leading.append(lambda: events.append("a+"))
    a.on_stopped_leading.append(lambda: events.append("a-"))
    await a.step()
    await b.step()
    assert (a.is_leader, b.is_leader, kube.holder()) == (True, False, "a")
    # a renews every retry period: b never takes over, whatever the time.
    for _ in range(20):
        clock.t += 2
        await a.step()
        await b.step()
        assert (a.is_leader, b.is_leader) == (True, False)
    # a goes silent (hung, partitioned): b waits a full lease duration from its last sighting.
    renewed_at = clock.t
    while not b.is_leader:
        assert clock.t - renewed_at <= 15 + 2
        clock.t += 1
        await b.step()
    assert clock.t - renewed_at >= 15
    assert kube.holder() == "b" and kube.leases["ns", "op"]["spec"]["leaseTransitions"] == 1
    # a comes back, reads b in the Lease and stops leading at once.
    await a.step()
    assert (a.is_leader, events) == (False, ["a+", "a-"])


async def test_a_released_lease_is_taken_over_at_once() -> None:
    kube, clock = FakeLeases(), Clock()
    a, b = elector(kube, clock, "a"), elector(kube, clock, "b")
    await a.step()
    await b.step()
    assert await a.release()
    assert (a.is_leader, kube.holder()) == (False, "")
    clock.t += 0.5
    await b.step()
    assert (b.is_leader, kube.holder()) == (True, "b")
    assert not await a.release()  # not the leader: nothing to give up


async def test_racing_candidates_get_one_lease() -> None:
    kube, clock = FakeLeases(), Clock()
    electors = [elector(kube, clock, name) for name in "abcd"]
    # Creation race: every one reads "no Lease", one create wins, the others get 409.
    results = await asyncio.gather(*(e.try_acquire_or_renew() for e in electors))
    assert sorted(results) == [False, False, False, True]
    winner = electors[results.index(True)].identity
    assert kube.holder() == winner
    # Take-over race on a released Lease: same outcome through resourceVersion.
    kube.leases["ns", "op"]["spec"]["holderIdentity"] = ""
    results = await asyncio.gather(*(e.try_acquire_or_renew() for e in electors))
    assert sorted(results) == [False, False, False, True]


async def test_a_leader_that_cannot_renew_steps_down_within_the_renew_deadline() -> None:
    kube, clock = FakeLeases(), Clock()
    a = elector(kube, clock, "a")
    await a.step()
    assert a.is_leader
    kube.fail_with = 500
    steps = 0
    while a.is_leader:
        clock.t += 2
        await a.step()
        steps += 1
        assert steps <= 10
    # Stepped down at the renew deadline, 5 s before anyone may take the Lease over.
    assert clock.t == 10
    kube.fail_with = None
    clock.t += 2
    await a.step()  # still the holder in the Lease: leads again
    assert a.is_leader


async def test_wait_leader_stop_and_release() -> None:
    kube, clock = FakeLeases(), Clock()
    a = elector(kube, clock, "a")
    a.start()
    await asyncio.wait_for(a.wait_leader(), timeout=5)
    await a.stop()
    assert not a.is_leader and kube.holder() == ""


def test_timings_follow_client_gos_rule() -> None:
    with pytest.raises(ValueError, match="renew deadline"):
        LeaderElector(FakeLeases(), "ns", "op", "a", lease_duration_s=10, renew_deadline_s=10)


# -- the resync follows leadership ----------------------------------------------------------


class CountingReconciler:
    def __init__(self) -> None:
        self.reconciled: list[str] = []

    async def reconcile(self, body: Obj) -> None:
        self.reconciled.append(body["metadata"]["name"])


class ListKube(FakeLeases):
    async def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[Obj]:
        return [{"metadata": {"name": "m1", "namespace": "ns"}}]


async def test_a_new_leader_resyncs_at_once_and_a_follower_never() -> None:
    kube, clock = ListKube(), Clock()
    a = elector(kube, clock, "a")
    reconciler = CountingReconciler()
    gained: list[bool] = []

    async def on_gain() -> None:
        gained.append(True)

    task = asyncio.create_task(
        resync(cast(Reconciler, reconciler), kube, ["ns"], 3600.0, elector=a, on_gain=on_gain)
    )
    try:
        await asyncio.sleep(0.05)
        assert reconciler.reconciled == []  # a follower waits, period or not
        await a.step()  # becomes the leader
        for _ in range(100):
            if reconciler.reconciled:
                break
            await asyncio.sleep(0.01)
        assert (reconciler.reconciled, gained) == (["m1"], [True])
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- only the leader writes -----------------------------------------------------------------


class RecordingReconciler(CountingReconciler):
    async def reconcile_named(self, namespace: str, name: str) -> None:
        self.reconciled.append(name)


@pytest.mark.parametrize("leading", [True, False])
async def test_watch_handlers_reconcile_only_on_the_leader(leading: bool) -> None:
    registry = kopf.OperatorRegistry()
    reconciler = RecordingReconciler()
    register(registry, cast(Reconciler, reconciler), lambda: leading)
    md = kopf.Body({"metadata": {"name": "m1", "namespace": "ns"}})
    child = kopf.Body(
        {
            "metadata": {
                "name": "m1",
                "namespace": "ns",
                "ownerReferences": [
                    {"apiVersion": "clawdbot.io/v1alpha1", "kind": "ModelDeployment", "name": "m1"}
                ],
            }
        }
    )
    for handler in registry._watching.get_all_handlers():
        body = md if handler.id == "modeldeployment" else child
        await handler.fn(body=body, type="MODIFIED")
    assert len(reconciler.reconciled) == (6 if leading else 0)


async def no_secret(namespace: str, name: str, key: str) -> str | None:
    return None


class StatusKube(FakeLeases):
    def __init__(self) -> None:
        super().__init__()
        self.patched: list[Obj] = []

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Obj
    ) -> Obj:
        self.patched.append(status)
        return {}


@pytest.mark.parametrize("leading", [True, False])
async def test_routing_policy_status_is_written_only_by_the_leader(leading: bool) -> None:
    kube = StatusKube()
    controller = RoutingPolicyController(
        kube, DiscoveryState(), lambda: leading, get_secret=no_secret
    )
    policy = {"metadata": {"name": "p", "namespace": "ns", "generation": 1}, "spec": {}}
    await controller._policy_status(policy, None, "spec: invalid")
    assert len(kube.patched) == (1 if leading else 0)
