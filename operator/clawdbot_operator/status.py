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


def compute_status(
    previous: ModelDeploymentStatus | None, obs: Observed, now: datetime
) -> ModelDeploymentStatus:
    """The full status for ``obs``."""
    prev = (previous or ModelDeploymentStatus()).conditions
    gen = obs.generation
    dep = obs.deployment
    ready = dep.ready_replicas if dep else 0
    desired = obs.desired_replicas
    cur = find(obs.revisions, obs.current)
    wanted = find(obs.revisions, obs.desired_revision)
    latest = max(obs.revisions, key=lambda r: r.revision, default=None)
    n = obs.current

    rolled_back = (
        latest is not None and latest.revision != n and latest.phase == RevisionPhase.ROLLED_BACK
    )
    rejected = (
        wanted is not None
        and wanted.revision != n
        and wanted.phase
        in (
            RevisionPhase.ROLLED_BACK,
            RevisionPhase.FAILED,
        )
    )

    if ready > 0:
        available = (T, "MinimumReplicasAvailable", f"{ready} of {desired} replicas ready.")
    elif desired == 0:
        available = (F, "ScaledToZero", "No replicas are desired.")
    else:
        available = (F, "NoReplicasReady", f"0 of {desired} replicas ready.")

    progressing_clock = obs.started
    if cur is None:
        progressing = (T, "Pending", "Waiting for the first revision.")
    elif cur.phase == RevisionPhase.PROGRESSING:
        upd = dep.updated_replicas if dep and dep.revision == n else 0
        progressing = (
            T,
            "RollingOut",
            f"Rolling out revision {n} (model version {cur.model_version}): "
            f"{upd} of {desired} replicas updated, {ready} ready.",
        )
    elif cur.phase == RevisionPhase.FAILED:
        progressing = (F, cur.reason or "RevisionFailed", f"Revision {n} failed.")
    elif rolled_back:
        progressing = (F, "RolledBack", f"Rolled back to revision {n}.")
    else:
        progressing = (F, "RolloutComplete", f"Revision {n} is rolled out.")

    if cur is not None and cur.phase == RevisionPhase.FAILED:
        degraded = (T, cur.reason or "RevisionFailed", f"Revision {n} failed: {cur.reason}.")
    elif rejected and wanted is not None:
        degraded = (
            T,
            wanted.reason or "RevisionRejected",
            f"The spec's revision {wanted.revision} was rolled back ({wanted.reason}); "
            f"serving revision {n}. Change the spec, or set spec.rollbackTo, to try again.",
        )
    elif cur is not None and cur.phase == RevisionPhase.HEALTHY and ready < desired:
        degraded = (T, "ReplicasUnavailable", f"{ready} of {desired} replicas ready.")
    else:
        degraded = (F, "AsExpected", "")

    if rolled_back and latest is not None:
        rb = (
            T,
            latest.reason or "RolledBack",
            f"Revision {latest.revision} was rolled back to revision {n} ({latest.reason}).",
        )
    else:
        rb = (F, "NoRollback", "")

    is_ready = (
        cur is not None
        and cur.phase == RevisionPhase.HEALTHY
        and not rejected
        and obs.desired_revision == n
        and ready >= desired
    )
    if is_ready:
        ready_c = (T, "Ready", f"Revision {n} serves on {ready} of {desired} replicas.")
    elif rejected:
        ready_c = (F, "RolledBack", str(degraded[2]))
    elif cur is not None and cur.phase == RevisionPhase.FAILED:
        ready_c = (F, "RevisionFailed", str(degraded[2]))
    elif cur is not None and cur.phase == RevisionPhase.PROGRESSING:
        ready_c = (F, "RolloutInProgress", str(progressing[2]))
    else:
        ready_c = (F, "ReplicasNotReady", f"{ready} of {desired} replicas ready.")

    def mk(type_: str, v: tuple[ConditionStatus, str, str], clock: bool = False) -> Condition:
        return _cond(prev, type_, v, generation=gen, now=now, restart_clock=clock)

    conditions = [
        mk("Available", available),
        mk("Ready", ready_c),
        mk("Progressing", progressing, progressing_clock),
        mk("Degraded", degraded),
        mk("RolledBack", rb),
    ]

    if cur is None:
        phase = Phase.PENDING
    elif cur.phase == RevisionPhase.FAILED:
        phase = Phase.FAILED
    elif rejected or (rolled_back and latest is not None and latest.reason != REQUESTED):
        phase = Phase.DEGRADED
    elif cur.phase == RevisionPhase.PROGRESSING:
        phase = Phase.PENDING if obs.stable is None and ready == 0 else Phase.PROGRESSING
    elif ready >= desired:
        phase = Phase.AVAILABLE
    else:
        phase = Phase.DEGRADED

    return ModelDeploymentStatus(
        phase=phase,
        observed_generation=gen,
        conditions=conditions,
        replicas=dep.replicas if dep else 0,
        ready_replicas=ready,
        updated_replicas=dep.updated_replicas if dep and dep.revision == n else 0,
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
