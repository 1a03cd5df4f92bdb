"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go and controller-runtime
do it, for the operator's write path.

Every replica runs kopf, the watches, the webhook and the discovery stream; only the leader
writes ModelDeployment children and status and RoutingPolicy status. The elector is one
asyncio task per replica:

    elector = LeaderElector(kube, namespace, "clawdbot-operator", identity())
    elector.start()
    await elector.wait_leader()        # or poll elector.is_leader
    ...
    await elector.stop()               # steps down and releases the Lease

Protocol (client-go's ``tryAcquireOrRenew``): read the Lease; create it when it is missing,
renew it when this replica holds it, take it over when it is released (no holder) or its
holder has not renewed it for ``leaseDurationSeconds``, else wait. Every write carries the
``resourceVersion`` that was read (or is a create), so of two replicas racing for the same
Lease the API server accepts one and answers 409 Conflict to the other.

Expiry is judged on this replica's own monotonic clock: how long it has seen the same record
unchanged, not the holder's ``renewTime``, so clock skew between nodes cannot make a replica
take over a Lease that is still being renewed. A new candidate therefore waits a full lease
duration before taking over a Lease whose holder died without releasing it.

The leader renews every ``retry_period``; when it has not managed to renew for
``renew_deadline`` (shorter than the lease duration) it stops leading, so it has stopped
writing before any other replica may consider the Lease expired. It also stops at once when
it reads another holder in the Lease. Stepping down does not end the process: the replica
keeps serving and stands for election again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from clawdbot_operator.kube import Kube, KubeError, Obj

log = logging.getLogger("clawdbot.operator.leader")

LEASE_API: Final = "coordination.k8s.io/v1"
# client-go's (and controller-runtime's) defaults.
LEASE_DURATION_S: Final = 15.0
RENEW_DEADLINE_S: Final = 10.0
RETRY_PERIOD_S: Final = 2.0
# A candidate retries after retry_period * (1 + random() * JITTER), as client-go's JitterUntil.
JITTER: Final = 1.2
# How long stop() may spend releasing the Lease.
RELEASE_TIMEOUT_S: Final = 5.0


def identity(pod_name: str = "") -> str:
    """This replica's name in the Lease: the pod name (``pod_name``, else ``POD_NAME``, else
    the host name) and a random suffix, so a restarted container never mistakes its
    predecessor's Lease for its own."""
    base = pod_name or os.environ.get("POD_NAME") or socket.gethostname() or "clawdbot-operator"
    return f"{base}_{secrets.token_hex(4)}"


class Action(enum.Enum):
    """What a replica does with the Lease it read."""

    ACQUIRE = "acquire"  # create it, or take over a released or expired one
    RENEW = "renew"  # this replica holds it
    WAIT = "wait"  # someone else holds it and renews it


@dataclass(frozen=True)
class Decision:
    action: Action
    holder: str  # the holder in the Lease that was read ("" when none)
    # With WAIT: seconds until the Lease expires unless its holder renews it.
    remaining_s: float = 0.0


def parse_time(value: Any) -> datetime | None:
    """A Lease timestamp (RFC 3339, MicroTime), or None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_time(moment: datetime) -> str:
    """A MicroTime as the API server writes it: UTC, microseconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def decide(
    lease: Obj | None, identity: str, now: datetime, *, observed_for_s: float | None = None
) -> Decision:
    """The decision of replica ``identity`` on reading ``lease`` (None: it does not exist).

    ``observed_for_s`` is how long this replica has seen the Lease's current record
    unchanged, by its own clock; the Lease expires when that reaches its
    ``leaseDurationSeconds``. Without it, the record's ``renewTime`` is compared to ``now``
    (which trusts the holder's clock).
    """
    if lease is None:
        return Decision(Action.ACQUIRE, "")
    spec = lease.get("spec") or {}
    holder = str(spec.get("holderIdentity") or "")
    if not holder:
        return Decision(Action.ACQUIRE, "")  # released
    if holder == identity:
        return Decision(Action.RENEW, holder)
    duration = float(spec.get("leaseDurationSeconds") or LEASE_DURATION_S)
    if observed_for_s is not None:
        remaining = duration - observed_for_s
    else:
        renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
        remaining = 0.0 if renewed is None else duration - (now - renewed).total_seconds()
    if remaining > 0:
        return Decision(Action.WAIT, holder, remaining)
    return Decision(Action.ACQUIRE, holder)  # expired: its holder stopped renewing


def next_spec(
    previous: Obj | None, identity: str, now: datetime, duration_s: float = LEASE_DURATION_S
) -> Obj:
    """The Lease spec this replica writes to acquire or renew ``previous`` (None: new)."""
    old = previous or {}
    mine = old.get("holderIdentity") == identity
    transitions = int(old.get("leaseTransitions") or 0)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": int(duration_s),
        "acquireTime": old.get("acquireTime") if mine else format_time(now),
        "renewTime": format_time(now),
        "leaseTransitions": transitions if mine or previous is None else transitions + 1,
    }


def released_spec(previous: Obj, now: datetime) -> Obj:
    """The spec that gives a Lease up: no holder, so the next candidate takes it at once."""
    return {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": format_time(now),
        "renewTime": format_time(now),
        "leaseTransitions": int(previous.get("leaseTransitions") or 0),
    }


class LeaderElector:
    """Campaigns for, holds and releases one Lease on behalf of this replica."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration_s: float = LEASE_DURATION_S,
        renew_deadline_s: float = RENEW_DEADLINE_S,
        retry_period_s: float = RETRY_PERIOD_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        owner_references: Sequence[Obj] = (),
    ) -> None:
        if not lease_duration_s > renew_deadline_s > JITTER * retry_period_s > 0:
            raise ValueError(
                "need lease duration > renew deadline > "
                f"{JITTER} * retry period > 0 (client-go's rule)"
            )
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.clock = clock
        self.monotonic = monotonic
        # Set on the Lease this replica creates: it goes when its owner does (uninstall).
        self.owner_references = [dict(o) for o in owner_references]
        # Called, in order, when this replica starts or stops leading.
        self.on_started_leading: list[Callable[[], None]] = []
        self.on_stopped_leading: list[Callable[[], None]] = []
        self._leading = asyncio.Event()
        self._renewed_at = 0.0  # monotonic time of the last successful acquire/renew
        self._observed: Obj | None = None  # the last Lease spec read or written
        self._observed_at = 0.0  # monotonic time it was first seen
        self._task: asyncio.Task[None] | None = None

    # -- state --------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this replica leads now (may write)."""
        return self._leading.is_set()

    @property
    def holder(self) -> str:
        """The holder in the last Lease this replica read or wrote ("" when none)."""
        return str((self._observed or {}).get("holderIdentity") or "")

    async def wait_leader(self) -> None:
        """Return once this replica leads (at once if it does)."""
        await self._leading.wait()

    def _set_leading(self, leading: bool, why: str = "") -> None:
        if leading == self.is_leader:
            return
        if leading:
            self._leading.set()
            log.info("%s became the leader (Lease %s/%s)", self.identity, self.namespace,
                     self.name)  # fmt: skip
            callbacks = self.on_started_leading
        else:
            self._leading.clear()
            level = logging.INFO if why == "shutting down" else logging.WARNING
            log.log(level, "%s stopped leading (Lease %s/%s): %s", self.identity,
                    self.namespace, self.name, why)  # fmt: skip
            callbacks = self.on_stopped_leading
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("leader election callback failed")

    def _observe(self, lease: Obj) -> None:
        spec = lease.get("spec") or {}
        if spec != self._observed:
            self._observed = spec
            self._observed_at = self.monotonic()

    # -- one round ----------------------------------------------------------------------

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this replica holds the Lease afterwards."""
        now = self.clock()
        lease = await self.kube.get(LEASE_API, "Lease", self.namespace, self.name)
        if lease is None:
            metadata: Obj = {"name": self.name, "namespace": self.namespace}
            if self.owner_references:
                metadata["ownerReferences"] = self.owner_references
            manifest = {
                "apiVersion": LEASE_API,
                "kind": "Lease",
                "metadata": metadata,
                "spec": next_spec(None, self.identity, now, self.lease_duration_s),
            }
            try:
                self._observe(await self.kube.create(manifest))
            except KubeError as exc:
                if exc.status == 409:  # another replica created it first
                    log.debug("lost the race to create Lease %s/%s", self.namespace, self.name)
                    return False
                raise
            return True
        self._observe(lease)
        decision = decide(
            lease,
            self.identity,
            now,
            observed_for_s=self.monotonic() - self._observed_at,
        )
        if decision.action is Action.WAIT:
            return False
        if decision.action is Action.ACQUIRE and decision.holder:
            log.info("Lease %s/%s of %s expired; taking it over", self.namespace, self.name,
                     decision.holder)  # fmt: skip
        updated = {
            **lease,
            "spec": next_spec(lease.get("spec"), self.identity, now, self.lease_duration_s),
        }
        try:
            self._observe(await self.kube.replace(updated))
        except KubeError as exc:
            if exc.status == 409:  # changed since it was read: someone else won
                log.debug("lost the race to update Lease %s/%s", self.namespace, self.name)
                return False
            raise
        return True

    async def step(self) -> None:
        """One round of the loop: try, then lead, keep leading or stop leading."""
        leading = self.is_leader
        # A leader must know within its renew deadline whether it still leads.
        budget = self.renew_deadline_s
        if leading:
            budget -= self.monotonic() - self._renewed_at
        ok = False
        try:
            async with asyncio.timeout(max(budget, 0.05)):
                ok = await self.try_acquire_or_renew()
        except Exception as exc:  # any failure is one failed round; the loop must go on
            log.warning("leader election: Lease %s/%s: %s", self.namespace, self.name,
                        exc or type(exc).__name__)  # fmt: skip
        if ok:
            self._renewed_at = self.monotonic()
            self._set_leading(True)
        elif leading:
            if self.holder not in ("", self.identity):
                self._set_leading(False, f"the Lease is held by {self.holder}")
            elif self.monotonic() - self._renewed_at >= self.renew_deadline_s:
                self._set_leading(False, f"not renewed within {self.renew_deadline_s:g}s")

    def next_delay(self) -> float:
        """Seconds to the next round: the retry period, jittered for candidates."""
        if self.is_leader:
            return self.retry_period_s
        return self.retry_period_s * (1 + random.random() * JITTER)

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Campaign and renew until cancelled."""
        log.info("%s campaigns for Lease %s/%s", self.identity, self.namespace, self.name)
        while True:
            await self.step()
            await asyncio.sleep(self.next_delay())

    def start(self) -> None:
        """Run the loop as a task."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="leader-election")

    async def release(self) -> bool:
        """Stop leading and give the Lease up; True when it was released."""
        was_leading = self.is_leader
        self._set_leading(False, "shutting down")
        if not was_leading:
            return False
        lease = await self.kube.get(LEASE_API, "Lease", self.namespace, self.name)
        spec = (lease or {}).get("spec") or {}
        if lease is None or spec.get("holderIdentity") != self.identity:
            return False
        try:
            self._observe(
                await self.kube.replace({**lease, "spec": released_spec(spec, self.clock())})
            )
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        log.info("%s released Lease %s/%s", self.identity, self.namespace, self.name)
        return True

    async def stop(self) -> None:
        """End the loop, then step down and release the Lease (best effort, bounded)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await self.release()
        except Exception as exc:  # the Lease then expires on its own
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name,
                        exc or type(exc).__name__)  # fmt: skip
