"""One level-based reconcile of a ModelDeployment: the glue between observations, the pure
decisions (revisions, rollback, status) and the API.

Every entry point (the ModelDeployment's own events, its children's events, the periodic
resync) ends here, and a reconcile only depends on what it reads, so running it twice, or
after a restart, changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError

from clawdbot_api.v1alpha1 import (
    API_VERSION,
    ModelDeployment,
    ModelDeploymentStatus,
    Revision,
    RevisionPhase,
)
from clawdbot_operator.builders import build_children
from clawdbot_operator.builders.deployment import desired_replicas
from clawdbot_operator.builders.hpa import build_hpa
from clawdbot_operator.builders.meta import (
    ANNOTATION_REVISION_HASH,
    LABEL_REVISION,
    controller_uid,
    name_of,
    namespace_of,
    selector_string,
)
from clawdbot_operator.builders.service import endpoint_url
from clawdbot_operator.config import OperatorConfig
from clawdbot_operator.kube import Kube, Obj
from clawdbot_operator.loadreports import RevisionHealthSource
from clawdbot_operator.metrics import OperatorMetrics
from clawdbot_operator.revisions import (
    PlannedEvent,
    RevisionPlan,
    apply_snapshot,
    build_controller_revision,
    controller_revision_name,
    find,
    plan_revisions,
    revision_hash,
    snapshot,
)
from clawdbot_operator.rollback import Decision, DeploymentState, PodState, Verdict, decide
from clawdbot_operator.status import (
    Observed,
    compute_status,
    condition,
    invalid_status,
    rollout_started_at,
)
from clawdbot_operator.validation import InvalidSpec, check_supported, parse

log = logging.getLogger(__name__)

HPA: Final = ("autoscaling/v2", "HorizontalPodAutoscaler")


def deployment_state(obj: Obj | None) -> DeploymentState | None:
    """The rollout-relevant part of a Deployment object."""
    if obj is None:
        return None
    meta, status = obj.get("metadata", {}), obj.get("status") or {}
    labels = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    rev = labels.get(LABEL_REVISION)
    exceeded = any(
        c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in status.get("conditions") or []
    )
    return DeploymentState(
        revision=int(rev) if rev and rev.isdigit() else None,
        up_to_date=status.get("observedGeneration", 0) >= meta.get("generation", 1),
        replicas=status.get("replicas", 0),
        updated_replicas=status.get("updatedReplicas", 0),
        ready_replicas=status.get("readyReplicas", 0),
        available_replicas=status.get("availableReplicas", 0),
        deadline_exceeded=exceeded,
    )


def pod_state(pod: Obj) -> PodState:
    """The rollback-relevant part of a Pod object."""
    rev = pod.get("metadata", {}).get("labels", {}).get(LABEL_REVISION, "")
    status = pod.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    restarts, waiting = 0, None
    for cs in status.get("containerStatuses") or []:
        restarts = max(restarts, int(cs.get("restartCount", 0)))
        reason = (cs.get("state") or {}).get("waiting", {}).get("reason")
        if reason and waiting != "CrashLoopBackOff":
            waiting = reason
    return PodState(
        name=pod.get("metadata", {}).get("name", ""),
        revision=int(rev) if rev.isdigit() else None,
        ready=ready,
        restarts=restarts,
        waiting_reason=waiting,
    )


def _previous_status(body: Obj) -> ModelDeploymentStatus | None:
    try:
        return ModelDeploymentStatus.model_validate(body.get("status") or {})
    except ValidationError:
        log.warning("ignoring an unreadable status on %s", body["metadata"].get("name"))
        return None


def _owned_by(obj: Obj, uid: str | None) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def _snapshot_hash(cr: Obj) -> str:
    """The revision hash a ControllerRevision records (its annotation, else its data's)."""
    annotations = cr["metadata"].get("annotations") or {}
    return str(annotations.get(ANNOTATION_REVISION_HASH) or revision_hash(cr["data"]))


def _mark(revisions: list[Revision], n: int, phase: RevisionPhase, reason: str) -> list[Revision]:
    return [
        r.model_copy(update={"phase": phase, "reason": reason}) if r.revision == n else r
        for r in revisions
    ]


@dataclass
class Reconciler:
    """Reconciles ModelDeployments; one at a time per object."""

    kube: Kube
    config: OperatorConfig
    health: RevisionHealthSource
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    metrics: OperatorMetrics | None = None

    def __post_init__(self) -> None:
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        # Objects with a reconcile waiting for the lock: a burst of child events (a rollout
        # touches the Deployment many times) coalesces into one more reconcile.
        self._queued: set[tuple[str, str]] = set()

    async def reconcile_named(self, namespace: str, name: str) -> None:
        """Read the ModelDeployment and reconcile it (nothing when it is gone)."""
        body = await self.kube.get(API_VERSION, "ModelDeployment", namespace, name)
        if body is not None:
            await self.reconcile(body)

    async def reconcile(self, body: Obj) -> None:
        """Reconcile one ModelDeployment body; concurrent calls for it run one after another."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if key in self._queued:
            return  # a reconcile already waits for the lock; it will read the newest state
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._queued.add(key)
        async with lock:
            self._queued.discard(key)
            # Re-read under the lock: another reconcile may have just written the status.
            fresh = await self.kube.get(API_VERSION, "ModelDeployment", *key)
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                self._locks.pop(key, None)
                return
            if self.metrics is None:
                await self._reconcile(fresh)
            else:
                await self.metrics.timed_reconcile(lambda: self._reconcile(fresh))

    async def _event(self, body: Obj, ev: PlannedEvent) -> None:
        await self.kube.post_event(body, ev.type, ev.reason, ev.message)

    async def _invalid(
        self, body: Obj, previous: ModelDeploymentStatus | None, err: InvalidSpec
    ) -> None:
        generation = body["metadata"].get("generation")
        status = invalid_status(previous, generation, err.field, err.message, self.clock())
        old = condition(previous.conditions, "Ready") if previous else None
        await self._write_status(body, status)
        if old is None or old.reason != "InvalidSpec" or old.message != str(err):
            log.warning("%s/%s: %s", body["metadata"]["namespace"], body["metadata"]["name"], err)
            await self._event(body, PlannedEvent("Warning", "InvalidSpec", f"Invalid spec: {err}."))

    async def _write_status(self, body: Obj, status: ModelDeploymentStatus) -> None:
        new = status.to_manifest()
        if new == (body.get("status") or {}):
            return
        meta = body["metadata"]
        await self.kube.patch_model_deployment(
            meta["namespace"], meta["name"], {"status": new}, status=True
        )

    async def _apply_children(
        self, body: Obj, md: ModelDeployment, revision: int, rev_hash: str
    ) -> Obj:
        """Create or update every child; returns the applied Deployment."""
        applied: Obj = {}
        for manifest in build_children(md, self.config, revision, rev_hash):
            kind, name = manifest["kind"], manifest["metadata"]["name"]
            existing = await self.kube.get(manifest["apiVersion"], kind, namespace_of(md), name)
            result = await self.kube.apply(manifest)
            if existing is None:
                created = PlannedEvent("Normal", "Created", f"Created {kind} {name}.")
                await self._event(body, created)
            if kind == "Deployment":
                applied = result
        if build_hpa(md, revision) is None and await self.kube.delete(
            *HPA, namespace_of(md), name_of(md)
        ):
            message = f"Deleted HorizontalPodAutoscaler {name_of(md)}."
            await self._event(body, PlannedEvent("Normal", "Deleted", message))
        return applied

    async def _reconcile(self, body: Obj) -> None:
        """Observe, plan the revisions, apply, decide on the rollout, report."""
        now = self.clock()
        previous = _previous_status(body)
        md = await self._checked(body, previous)
        if md is None:
            return
        snap = snapshot(md, self.config)
        desired_hash = revision_hash(snap)
        snapshots = await self._snapshots(md)
        prev = previous or ModelDeploymentStatus()
        plan = plan_revisions(
            history=prev.revisions,
            current=prev.current_revision,
            stable=prev.stable_revision,
            desired_hash=desired_hash,
            model_version=md.spec.model.version,
            image=str(snap["spec"]["image"]),
            now=now,
            history_limit=md.spec.rollout.history_limit,
            rollback_to=md.spec.rollback_to,
            snapshots=frozenset(snapshots.data),
        )
        if isinstance(plan, InvalidSpec):
            await self._invalid(body, previous, plan)
            return
        rollout = _Rollout.of(plan)
        await self._sync_snapshots(md, plan, snapshots, snap, desired_hash)
        deployment = await self._apply_current(body, md, rollout, snapshots)
        decision = await self._decide(
            md, rollout, deployment, previous=previous, now=now, snapshots=snapshots
        )
        deployment = await self._take(body, md, rollout, decision, snapshots) or deployment
        observed = Observed(
            generation=body["metadata"].get("generation"),
            revisions=rollout.revisions,
            current=rollout.current,
            stable=rollout.stable,
            desired_revision=_desired_revision(rollout, desired_hash),
            desired_replicas=desired_replicas(md),
            deployment=deployment_state(deployment),
            selector=selector_string(md),
            endpoint=endpoint_url(md),
            started=rollout.started,
        )
        await self._write_status(body, compute_status(previous, observed, now))
        if md.spec.rollback_to is not None:
            # Done: clear the request (as Deployments once did with their rollbackTo).
            ns, name = namespace_of(md), name_of(md)
            await self.kube.patch_model_deployment(ns, name, {"spec": {"rollbackTo": None}})
        for ev in rollout.events:
            await self._event(body, ev)

    async def _checked(
        self, body: Obj, previous: ModelDeploymentStatus | None
    ) -> ModelDeployment | None:
        """The typed ModelDeployment when this operator can serve it; else None, with the
        status and a Warning Event saying which field is wrong."""
        parsed = parse(body)
        err = parsed if isinstance(parsed, InvalidSpec) else check_supported(parsed, self.config)
        if err is not None:
            await self._invalid(body, previous, err)
            return None
        assert not isinstance(parsed, InvalidSpec)
        return parsed

    async def _snapshots(self, md: ModelDeployment) -> _Snapshots:
        """The revisions' settings, from the ControllerRevisions this ModelDeployment owns."""
        crs = await self.kube.list(
            "apps/v1", "ControllerRevision", namespace_of(md), selector_string(md)
        )
        owned = [cr for cr in crs if _owned_by(cr, md.metadata.uid)]
        return _Snapshots(
            data={int(cr["revision"]): cr["data"] for cr in owned},
            hashes={int(cr["revision"]): _snapshot_hash(cr) for cr in owned},
        )

    async def _sync_snapshots(
        self,
        md: ModelDeployment,
        plan: RevisionPlan,
        snapshots: _Snapshots,
        snap: dict[str, Any],
        desired_hash: str,
    ) -> None:
        """Write the current revision's ControllerRevision when missing (replacing a stale
        one), and delete those of pruned revisions."""
        ns, name = namespace_of(md), name_of(md)
        cur = find(plan.revisions, plan.current)
        assert cur is not None
        if (
            plan.create is not None
            and plan.create in snapshots.data
            and snapshots.hashes[plan.create] != cur.hash
        ):
            # A run that died between writing this number's ControllerRevision and recording
            # it in status left a snapshot of a spec that has changed since. Its data is
            # immutable: replace it, or the pods would run the old settings as this revision.
            log.info("%s/%s: replacing a stale snapshot of revision %s", ns, name, plan.current)
            cr_name = controller_revision_name(md, plan.create)
            await self.kube.delete("apps/v1", "ControllerRevision", ns, cr_name)
            del snapshots.data[plan.create]
        if plan.current not in snapshots.data and cur.hash == desired_hash:
            # New, or its ControllerRevision was deleted by hand: (re)write it from the spec.
            await self.kube.apply(build_controller_revision(md, plan.current, snap))
            snapshots.data[plan.current] = snap
        for n in plan.pruned:
            cr_name = controller_revision_name(md, n)
            await self.kube.delete("apps/v1", "ControllerRevision", ns, cr_name)

    async def _apply_current(
        self, body: Obj, md: ModelDeployment, rollout: _Rollout, snapshots: _Snapshots
    ) -> Obj | None:
        """Apply the children of the current revision; the Deployment as it now is."""
        current = rollout.current
        cur = find(rollout.revisions, current)
        assert cur is not None
        if current in snapshots.data:
            effective = apply_snapshot(md, snapshots.data[current])
            return await self._apply_children(body, effective, current, cur.hash)
        # Its ControllerRevision is gone and the spec says something else: the exact settings
        # are unknown, so leave the children as they are rather than guess.
        ns, name = namespace_of(md), name_of(md)
        log.warning("%s/%s: no snapshot of revision %s; children left as is", ns, name, current)
        return await self.kube.get("apps/v1", "Deployment", ns, name)

    async def _decide(
        self,
        md: ModelDeployment,
        rollout: _Rollout,
        deployment: Obj | None,
        *,
        previous: ModelDeploymentStatus | None,
        now: datetime,
        snapshots: _Snapshots,
    ) -> Decision:
        """The rollback check on what the pods, the Deployment and the load reports show."""
        ns, name = namespace_of(md), name_of(md)
        pods = [pod_state(p) for p in await self._own_pods(md, deployment)]
        decision = decide(
            revisions=rollout.revisions,
            current=rollout.current,
            rollout=md.spec.rollout,
            desired_replicas=desired_replicas(md),
            pods=pods,
            deployment=deployment_state(deployment),
            started_at=now if rollout.started else rollout_started_at(previous),
            now=now,
            health=self.health.revision_health(ns, name, rollout.current, now),
        )
        if decision.verdict == Verdict.ROLLBACK and decision.target not in snapshots.data:
            return Decision(
                Verdict.FAIL,
                decision.reason,
                f"{decision.message} Revision {decision.target} has no snapshot to roll back to.",
            )
        return decision

    async def _own_pods(self, md: ModelDeployment, deployment: Obj | None) -> list[Obj]:
        """The pods of this ModelDeployment's own Deployment: controlled by one of its
        ReplicaSets (UIDs). A pod that merely carries the labels (anyone who can create pods
        can write them) must not be able to fail a rollout with its crash loop."""
        uid = ((deployment or {}).get("metadata") or {}).get("uid")
        if not uid:
            return []
        ns, selector = namespace_of(md), selector_string(md)
        replica_sets = {
            rs["metadata"].get("uid")
            for rs in await self.kube.list("apps/v1", "ReplicaSet", ns, selector)
            if controller_uid(rs, "Deployment") == uid
        }
        return [
            p
            for p in await self.kube.list("v1", "Pod", ns, selector)
            if controller_uid(p, "ReplicaSet") in replica_sets
        ]

    async def _take(
        self,
        body: Obj,
        md: ModelDeployment,
        rollout: _Rollout,
        decision: Decision,
        snapshots: _Snapshots,
    ) -> Obj | None:
        """Record the verdict in the history; on a rollback, apply the target's children
        and return the Deployment as it now is (else None)."""
        current = rollout.current
        if decision.verdict == Verdict.ROLLBACK and decision.target is not None:
            target = decision.target
            rollout.mark(current, RevisionPhase.ROLLED_BACK, decision.reason)
            message = f"{decision.message} Rolled back to revision {target}."
            rollout.events.append(PlannedEvent("Warning", "RolledBack", message))
            rollout.current, rollout.stable, rollout.started = target, target, False
            tgt = find(rollout.revisions, target)
            assert tgt is not None
            restored = apply_snapshot(md, snapshots.data[target])
            return await self._apply_children(body, restored, target, tgt.hash)
        if decision.verdict == Verdict.FAIL:
            rollout.mark(current, RevisionPhase.FAILED, decision.reason)
            rollout.events.append(PlannedEvent("Warning", "RevisionFailed", decision.message))
        elif decision.verdict == Verdict.HEALTHY:
            rollout.mark(current, RevisionPhase.HEALTHY, decision.reason)
            rollout.stable = current
            rollout.events.append(PlannedEvent("Normal", "RevisionHealthy", decision.message))
        return None


@dataclass
class _Snapshots:
    """The revisions' settings kept in ControllerRevisions, by revision number."""

    data: dict[int, dict[str, Any]]
    hashes: dict[int, str]


@dataclass
class _Rollout:
    """The revision history as one reconcile moves it along."""

    revisions: list[Revision]
    current: int
    stable: int | None
    started: bool
    events: list[PlannedEvent]

    @classmethod
    def of(cls, plan: RevisionPlan) -> _Rollout:
        return cls(plan.revisions, plan.current, plan.stable, plan.started, list(plan.events))

    def mark(self, n: int, phase: RevisionPhase, reason: str) -> None:
        """Set revision ``n``'s phase and reason."""
        self.revisions = _mark(self.revisions, n, phase, reason)


def _desired_revision(rollout: _Rollout, desired_hash: str) -> int:
    """The revision the spec asks for: the newest with its hash (the current one when the
    user rolled that back on purpose)."""
    desired = max(
        (r for r in rollout.revisions if r.hash == desired_hash),
        key=lambda r: r.revision,
        default=None,
    )
    if desired is None:
        return rollout.current
    if desired.phase == RevisionPhase.ROLLED_BACK and desired.reason == "RollbackRequested":
        # The user asked to leave it: the current revision is what they want now.
        return rollout.current
    return desired.revision
