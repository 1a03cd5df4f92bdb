"""When a revision is healthy, and when it must be rolled back: one pure decision.

Inputs are observations (revisions, pods, the Deployment, traffic health) and the clock;
the output says what to do. The reconciler gathers the inputs and carries out the verdict.

A revision still rolling out (phase Progressing) fails when its pods crash-loop (a
container waiting in CrashLoopBackOff, or restarted ``autoRollback.maxRestarts`` times) or
when it is not ready within ``rollout.progressDeadlineSeconds`` (the operator's clock, or the
Deployment controller's own ProgressDeadlineExceeded). Any current revision fails when the
sidecars' load reports show its error rate or p95 latency over the thresholds, once it has
served ``minRequests``. A failed revision is rolled back to the newest other Healthy one;
without one (or with ``autoRollback.enabled: false``) it is marked Failed and left running.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from clawdbot_api.v1alpha1 import Revision, RevisionPhase, Rollout
from clawdbot_operator.loadreports import RevisionHealth
from clawdbot_operator.revisions import find

CRASH_LOOP: Final = "CrashLoopBackOff"


@dataclass(frozen=True)
class PodState:
    """What the decision needs to know about one model pod."""

    name: str
    revision: int | None
    ready: bool
    restarts: int = 0
    waiting_reason: str | None = None


@dataclass(frozen=True)
class DeploymentState:
    """The Deployment's status, as far as a rollout is concerned."""

    revision: int | None
    """Revision of the Deployment's pod template (from its label)."""
    up_to_date: bool
    """status.observedGeneration has caught up with metadata.generation."""
    replicas: int = 0
    updated_replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    deadline_exceeded: bool = False
    """The Deployment controller reports Progressing=False, ProgressDeadlineExceeded."""

    def complete(self, revision: int, desired: int) -> bool:
        """Every desired pod runs ``revision`` and is available, and no old pod is left."""
        return (
            self.up_to_date
            and self.revision == revision
            and self.updated_replicas >= desired
            and self.available_replicas >= desired
            and self.ready_replicas >= desired
            and self.replicas == desired
        )


class Verdict(StrEnum):
    WAIT = "Wait"
    HEALTHY = "Healthy"
    ROLLBACK = "Rollback"
    FAIL = "Fail"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""
    """CamelCase cause: CrashLoop, ProgressDeadlineExceeded, ErrorRateExceeded, ..."""
    message: str = ""
    target: int | None = None
    """Revision to roll back to (verdict ROLLBACK)."""


WAIT: Final = Decision(Verdict.WAIT)


def rollback_target(revisions: list[Revision], current: int) -> int | None:
    """The newest Healthy revision other than ``current``."""
    healthy = [
        r.revision for r in revisions if r.phase == RevisionPhase.HEALTHY and r.revision != current
    ]
    return max(healthy, default=None)


def _problem(
    *,
    cur: Revision,
    rollout: Rollout,
    pods: list[PodState],
    deployment: DeploymentState | None,
    started_at: datetime | None,
    now: datetime,
    health: RevisionHealth | None,
) -> tuple[str, str] | None:
    n = cur.revision
    limits = rollout.auto_rollback
    if cur.phase == RevisionPhase.PROGRESSING:
        for pod in pods:
            if pod.revision != n:
                continue
            if pod.waiting_reason == CRASH_LOOP or pod.restarts >= limits.max_restarts:
                why = pod.waiting_reason or f"{pod.restarts} restarts"
                return "CrashLoop", f"Pod {pod.name} of revision {n} is crash-looping ({why})."
        deadline = rollout.progress_deadline_seconds
        late = started_at is not None and (now - started_at).total_seconds() > deadline
        stalled = (
            deployment is not None
            and deployment.revision == n
            and (deployment.up_to_date and deployment.deadline_exceeded)
        )
        if late or stalled:
            return (
                "ProgressDeadlineExceeded",
                f"Revision {n} did not become ready within {deadline}s.",
            )
    if health is not None and health.requests >= limits.min_requests:
        if health.error_rate > limits.max_error_rate:
            return (
                "ErrorRateExceeded",
                f"Revision {n} failed {health.error_rate:.1%} of {health.requests} requests "
                f"(limit {limits.max_error_rate:.1%}).",
            )
        p95 = health.p95_latency_ms
        limit = limits.max_p95_latency_ms
        if limit is not None and p95 is not None and p95 > limit:
            return (
                "LatencyExceeded",
                f"Revision {n} answered with a p95 latency of {p95:.0f}ms (limit {limit}ms).",
            )
    return None


def decide(
    *,
    revisions: list[Revision],
    current: int,
    rollout: Rollout,
    desired_replicas: int,
    pods: list[PodState],
    deployment: DeploymentState | None,
    started_at: datetime | None,
    now: datetime,
    health: RevisionHealth | None = None,
) -> Decision:
    """What to do about the current revision now (pure)."""
    cur = find(revisions, current)
    if cur is None or cur.phase in (RevisionPhase.ROLLED_BACK, RevisionPhase.SUPERSEDED):
        return WAIT
    target = rollback_target(revisions, current)
    # Traffic thresholds judge a revision against an alternative; with none, don't flap.
    problem = _problem(
        cur=cur,
        rollout=rollout,
        pods=pods,
        deployment=deployment,
        started_at=started_at,
        now=now,
        health=health if target else None,
    )
    if problem is not None and cur.phase != RevisionPhase.FAILED:
        reason, message = problem
        if rollout.auto_rollback.enabled and target is not None:
            return Decision(Verdict.ROLLBACK, reason, message, target)
        return Decision(Verdict.FAIL, reason, message)
    if (
        problem is None
        and cur.phase in (RevisionPhase.PROGRESSING, RevisionPhase.FAILED)
        and deployment is not None
        and deployment.complete(current, desired_replicas)
    ):
        return Decision(Verdict.HEALTHY, "RolloutComplete", f"Revision {current} is ready.")
    return WAIT
