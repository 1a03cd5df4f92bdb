"""status of a ModelDeployment, computed from what was observed (pure).

Conditions: ``Available`` (some replica serves), ``Ready`` (the spec's revision runs on every
desired replica; the summary ``kubectl wait --for=condition=Ready`` uses), ``Progressing`` (a
rollout is under way; its lastTransitionTime marks when the current rollout began),
``Degraded`` and ``RolledBack``. ``lastTransitionTime`` changes only with ``status``, except
that Progressing restarts its clock when a different revision starts rolling out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from clawdbot_api.v1alpha1 import (
    Condition,
    ConditionStatus,
    ModelDeploymentStatus,
    Phase,
    Revision,
    RevisionPhase,
)
from clawdbot_operator.revisions import find
from clawdbot_operator.rollback import DeploymentState

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
REQUESTED = "RollbackRequested"  # a rollback the user asked for is not a degradation
CONDITION_TYPES = ("Available", "Ready", "Progressing", "Degraded", "RolledBack")


@dataclass(frozen=True)
class Observed:
    """What the status is computed from."""

    generation: int | None
    revisions: list[Revision]
    current: int | None
    stable: int | None
    desired_revision: int | None
    """The revision the spec asks for (differs from current after a rollback)."""
    desired_replicas: int
    deployment: DeploymentState | None
    selector: str
    endpoint: str
    started: bool = False
    """A different revision started rolling out in this reconcile."""


def condition(conditions: list[Condition], type_: str) -> Condition | None:
    """The condition of this type, if present."""
    return next((c for c in conditions if c.type == type_), None)


def _cond(
    previous: list[Condition],
    type_: str,
    value: tuple[ConditionStatus, str, str],
    *,
    generation: int | None,
    now: datetime,
    restart_clock: bool = False,
) -> Condition:
    status, reason, message = value
    old = condition(previous, type_)
    since = now
    if old is not None and old.status == status and not restart_clock:
        since = old.last_transition_time
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=since,
    )


def invalid_status(
    previous: ModelDeploymentStatus | None,
    generation: int | None,
    field: str,
    message: str,
    now: datetime,
) -> ModelDeploymentStatus:
    """Status of a ModelDeployment whose spec can't be served: children untouched, phase
    Failed, Ready/Available False with reason InvalidSpec naming the field."""
    prev = previous or ModelDeploymentStatus()
    text = f"{field}: {message}"
    old = prev.conditions
    conds = [
        _cond(old, "Ready", (F, "InvalidSpec", text), generation=generation, now=now),
        _cond(old, "Degraded", (T, "InvalidSpec", text), generation=generation, now=now),
    ]
    kept = [c for c in prev.conditions if c.type not in {"Ready", "Degraded"}]
    return prev.model_copy(
        update={
            "phase": Phase.FAILED,
            "observed_generation": generation,
            "conditions": sorted([*kept, *conds], key=_order),
        }
    )


def _order(c: Condition) -> int:
    return CONDITION_TYPES.index(c.type) if c.type in CONDITION_TYPES else len(CONDITION_TYPES)


Verdict = tuple[ConditionStatus, str, str]
"""A condition's status, reason and message."""


@dataclass(frozen=True)
class _Facts:
    """What every condition is derived from, worked out once from the observation."""

    n: int | None
    """The current revision's number."""
    cur: Revision | None
    wanted: Revision | None
    """The revision the spec asks for."""
    latest: Revision | None
    ready: int
    desired: int
    deployment: DeploymentState | None
    rolled_back: bool
    """The newest revision is not current: it was rolled back."""
    rejected: bool
    """The spec's revision is not current because it failed or was rolled back."""

    @classmethod
    def of(cls, obs: Observed) -> _Facts:
        n = obs.current
        wanted = find(obs.revisions, obs.desired_revision)
        latest = max(obs.revisions, key=lambda r: r.revision, default=None)
        refused = (RevisionPhase.ROLLED_BACK, RevisionPhase.FAILED)
        return cls(
            n=n,
            cur=find(obs.revisions, n),
            wanted=wanted,
            latest=latest,
            ready=obs.deployment.ready_replicas if obs.deployment else 0,
            desired=obs.desired_replicas,
            deployment=obs.deployment,
            rolled_back=latest is not None
            and latest.revision != n
            and latest.phase == RevisionPhase.ROLLED_BACK,
            rejected=wanted is not None and wanted.revision != n and wanted.phase in refused,
        )

    def phase_is(self, phase: RevisionPhase) -> bool:
        """The current revision exists and is in ``phase``."""
        return self.cur is not None and self.cur.phase == phase

    @property
    def updated(self) -> int:
        """Replicas of the Deployment that run the current revision."""
        dep = self.deployment
        return dep.updated_replicas if dep and dep.revision == self.n else 0


def _available(f: _Facts) -> Verdict:
    if f.ready > 0:
        return T, "MinimumReplicasAvailable", f"{f.ready} of {f.desired} replicas ready."
    if f.desired == 0:
        return F, "ScaledToZero", "No replicas are desired."
    return F, "NoReplicasReady", f"0 of {f.desired} replicas ready."


def _progressing(f: _Facts) -> Verdict:
    if f.cur is None:
        return T, "Pending", "Waiting for the first revision."
    if f.cur.phase == RevisionPhase.PROGRESSING:
        return (
            T,
            "RollingOut",
            f"Rolling out revision {f.n} (model version {f.cur.model_version}): "
            f"{f.updated} of {f.desired} replicas updated, {f.ready} ready.",
        )
    if f.cur.phase == RevisionPhase.FAILED:
        return F, f.cur.reason or "RevisionFailed", f"Revision {f.n} failed."
    if f.rolled_back:
        return F, "RolledBack", f"Rolled back to revision {f.n}."
    return F, "RolloutComplete", f"Revision {f.n} is rolled out."


def _degraded(f: _Facts) -> Verdict:
    if f.cur is not None and f.cur.phase == RevisionPhase.FAILED:
        return T, f.cur.reason or "RevisionFailed", f"Revision {f.n} failed: {f.cur.reason}."
    if f.rejected and f.wanted is not None:
        return (
            T,
            f.wanted.reason or "RevisionRejected",
            f"The spec's revision {f.wanted.revision} was rolled back ({f.wanted.reason}); "
            f"serving revision {f.n}. Change the spec, or set spec.rollbackTo, to try again.",
        )
    if f.phase_is(RevisionPhase.HEALTHY) and f.ready < f.desired:
        return T, "ReplicasUnavailable", f"{f.ready} of {f.desired} replicas ready."
    return F, "AsExpected", ""


def _rolled_back(f: _Facts) -> Verdict:
    if f.rolled_back and f.latest is not None:
        return (
            T,
            f.latest.reason or "RolledBack",
            f"Revision {f.latest.revision} was rolled back to revision {f.n} ({f.latest.reason}).",
        )
    return F, "NoRollback", ""


def _ready(f: _Facts, desired_revision: int | None, degraded: Verdict,
           progressing: Verdict) -> Verdict:  # fmt: skip
    serving = (
        f.phase_is(RevisionPhase.HEALTHY)
        and not f.rejected
        and desired_revision == f.n
        and f.ready >= f.desired
    )
    if serving:
        return T, "Ready", f"Revision {f.n} serves on {f.ready} of {f.desired} replicas."
    if f.rejected:
        return F, "RolledBack", degraded[2]
    if f.phase_is(RevisionPhase.FAILED):
        return F, "RevisionFailed", degraded[2]
    if f.phase_is(RevisionPhase.PROGRESSING):
        return F, "RolloutInProgress", progressing[2]
    return F, "ReplicasNotReady", f"{f.ready} of {f.desired} replicas ready."


def _phase(f: _Facts, stable: int | None) -> Phase:
    if f.cur is None:
        return Phase.PENDING
    if f.cur.phase == RevisionPhase.FAILED:
        return Phase.FAILED
    if f.rejected or (f.rolled_back and f.latest is not None and f.latest.reason != REQUESTED):
        return Phase.DEGRADED
    if f.cur.phase == RevisionPhase.PROGRESSING:
        return Phase.PENDING if stable is None and f.ready == 0 else Phase.PROGRESSING
    return Phase.AVAILABLE if f.ready >= f.desired else Phase.DEGRADED


def compute_status(
    previous: ModelDeploymentStatus | None, obs: Observed, now: datetime
) -> ModelDeploymentStatus:
    """The full status for ``obs``."""
    prev = (previous or ModelDeploymentStatus()).conditions
    facts = _Facts.of(obs)
    progressing, degraded = _progressing(facts), _degraded(facts)

    def mk(type_: str, v: Verdict, clock: bool = False) -> Condition:
        return _cond(prev, type_, v, generation=obs.generation, now=now, restart_clock=clock)

    conditions = [
        mk("Available", _available(facts)),
        mk("Ready", _ready(facts, obs.desired_revision, degraded, progressing)),
        mk("Progressing", progressing, obs.started),
        mk("Degraded", degraded),
        mk("RolledBack", _rolled_back(facts)),
    ]
    dep = obs.deployment
    return ModelDeploymentStatus(
        phase=_phase(facts, obs.stable),
        observed_generation=obs.generation,
        conditions=conditions,
        replicas=dep.replicas if dep else 0,
        ready_replicas=facts.ready,
        updated_replicas=facts.updated,
        selector=obs.selector,
        current_revision=obs.current,
        stable_revision=obs.stable,
        revisions=obs.revisions,
        endpoint=obs.endpoint,
    )


def rollout_started_at(previous: ModelDeploymentStatus | None) -> datetime | None:
    """When the current rollout began: the Progressing condition's clock, while True."""
    if previous is None:
        return None
    prog = condition(previous.conditions, "Progressing")
    if prog is None or prog.status != T:
        return None
    return prog.last_transition_time
