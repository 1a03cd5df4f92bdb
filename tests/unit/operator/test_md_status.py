"""Status and conditions computed from observations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from clawdbot_api.v1alpha1 import ModelDeploymentStatus, Phase, Revision, RevisionPhase
from clawdbot_operator.rollback import DeploymentState
from clawdbot_operator.status import Observed, compute_status, invalid_status, rollout_started_at

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rev(n: int, phase: RevisionPhase, reason: str = "") -> Revision:
    return Revision(
        revision=n, hash=f"h{n}", model_version=str(n), phase=phase, reason=reason, created_at=T0
    )


def obs(revisions: list[Revision], current: int, ready: int, **kw: object) -> Observed:
    base: dict[str, object] = {
        "generation": 4,
        "revisions": revisions,
        "current": current,
        "stable": None,
        "desired_revision": current,
        "desired_replicas": 2,
        "deployment": DeploymentState(
            revision=current,
            up_to_date=True,
            replicas=2,
            updated_replicas=2,
            ready_replicas=ready,
            available_replicas=ready,
        ),
        "selector": "a=b",
        "endpoint": "http://x",
    }
    base.update(kw)
    return Observed(**base)  # type: ignore[arg-type]


def cond(status: ModelDeploymentStatus, type_: str) -> tuple[str, str]:
    c = next(c for c in status.conditions if c.type == type_)
    assert c.observed_generation == 4
    return c.status.value, c.reason


def test_first_rollout_is_pending_then_available() -> None:
    s = compute_status(None, obs([rev(1, RevisionPhase.PROGRESSING)], 1, 0, started=True), T0)
    assert s.phase == Phase.PENDING
    assert cond(s, "Progressing") == ("True", "RollingOut")
    assert cond(s, "Ready") == ("False", "RolloutInProgress")
    assert rollout_started_at(s) == T0

    later = T0 + timedelta(seconds=30)
    s2 = compute_status(s, obs([rev(1, RevisionPhase.HEALTHY)], 1, 2, stable=1), later)
    assert s2.phase == Phase.AVAILABLE
    assert cond(s2, "Ready") == ("True", "Ready")
    assert cond(s2, "Available") == ("True", "MinimumReplicasAvailable")
    assert cond(s2, "Degraded") == ("False", "AsExpected")
    assert cond(s2, "RolledBack") == ("False", "NoRollback")
    assert (s2.ready_replicas, s2.selector, s2.current_revision) == (2, "a=b", 1)
    assert rollout_started_at(s2) is None


def test_last_transition_time_moves_only_with_status() -> None:
    s = compute_status(None, obs([rev(1, RevisionPhase.HEALTHY)], 1, 2), T0)
    s2 = compute_status(s, obs([rev(1, RevisionPhase.HEALTHY)], 1, 1), T0 + timedelta(hours=1))
    ready = {c.type: c.last_transition_time for c in s2.conditions}
    assert ready["Available"] == T0  # still True
    assert ready["Ready"] == T0 + timedelta(hours=1)  # became False
    assert s2.phase == Phase.DEGRADED


def test_a_new_rollout_restarts_the_progressing_clock() -> None:
    revs = [rev(1, RevisionPhase.SUPERSEDED), rev(2, RevisionPhase.PROGRESSING)]
    s = compute_status(None, obs(revs, 2, 0, started=True), T0)
    revs3 = [*revs, rev(3, RevisionPhase.PROGRESSING)]
    s2 = compute_status(s, obs(revs3, 3, 0, started=True), T0 + timedelta(minutes=1))
    assert rollout_started_at(s2) == T0 + timedelta(minutes=1)


def test_after_an_automatic_rollback() -> None:
    revs = [rev(1, RevisionPhase.HEALTHY), rev(2, RevisionPhase.ROLLED_BACK, "CrashLoop")]
    s = compute_status(None, obs(revs, 1, 2, stable=1, desired_revision=2), T0)
    assert s.phase == Phase.DEGRADED
    assert cond(s, "RolledBack") == ("True", "CrashLoop")
    assert cond(s, "Available") == ("True", "MinimumReplicasAvailable")
    assert cond(s, "Degraded") == ("True", "CrashLoop")
    assert cond(s, "Ready") == ("False", "RolledBack")
    assert cond(s, "Progressing") == ("False", "RolledBack")


def test_after_a_requested_rollback_the_model_is_available() -> None:
    revs = [rev(1, RevisionPhase.HEALTHY), rev(2, RevisionPhase.ROLLED_BACK, "RollbackRequested")]
    s = compute_status(None, obs(revs, 1, 2, stable=1), T0)
    assert s.phase == Phase.AVAILABLE
    assert cond(s, "Ready") == ("True", "Ready")
    assert cond(s, "Degraded") == ("False", "AsExpected")
    assert cond(s, "RolledBack") == ("True", "RollbackRequested")


def test_invalid_spec() -> None:
    s = invalid_status(None, 3, "spec.accelerator.count", "too many", T0)
    assert s.phase == Phase.FAILED
    ready = next(c for c in s.conditions if c.type == "Ready")
    assert (ready.status.value, ready.reason) == ("False", "InvalidSpec")
    assert ready.message == "spec.accelerator.count: too many"
    assert ready.observed_generation == 3
