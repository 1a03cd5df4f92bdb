"""The rollback decision: revisions + pod states + Deployment + load reports + clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from clawdbot_api.v1alpha1 import Revision, RevisionPhase, Rollout
from clawdbot_operator.loadreports import LoadReport, LoadReportStore
from clawdbot_operator.rollback import DeploymentState, PodState, Verdict, decide

NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
ROLLOUT = Rollout.model_validate(
    {"progressDeadlineSeconds": 60, "autoRollback": {"maxRestarts": 3, "minRequests": 20}}
)


def rev(n: int, phase: RevisionPhase) -> Revision:
    return Revision(revision=n, hash=f"h{n}", model_version=str(n), phase=phase, created_at=NOW)


HISTORY = [rev(1, RevisionPhase.HEALTHY), rev(2, RevisionPhase.PROGRESSING)]


def dep(revision: int = 2, ready: int = 0, **kw: Any) -> DeploymentState:
    base: dict[str, Any] = {
        "revision": revision,
        "up_to_date": True,
        "replicas": 2,
        "updated_replicas": 2,
        "ready_replicas": ready,
        "available_replicas": ready,
    }
    base.update(kw)
    return DeploymentState(**base)


def run(**kw: Any) -> Any:
    args: dict[str, Any] = {
        "revisions": HISTORY,
        "current": 2,
        "rollout": ROLLOUT,
        "desired_replicas": 2,
        "pods": [],
        "deployment": dep(),
        "started_at": NOW - timedelta(seconds=10),
        "now": NOW,
    }
    args.update(kw)
    return decide(**args)


def test_waits_while_within_the_deadline() -> None:
    assert run().verdict == Verdict.WAIT


def test_healthy_when_every_replica_is_ready() -> None:
    d = run(deployment=dep(ready=2))
    assert d.verdict == Verdict.HEALTHY


def test_not_healthy_while_old_pods_remain_or_status_is_stale() -> None:
    assert run(deployment=dep(ready=2, replicas=3)).verdict == Verdict.WAIT
    assert run(deployment=dep(ready=2, up_to_date=False)).verdict == Verdict.WAIT
    assert run(deployment=dep(revision=1, ready=2)).verdict == Verdict.WAIT


def test_deadline_by_the_clock_rolls_back_to_the_last_healthy_revision() -> None:
    d = run(started_at=NOW - timedelta(seconds=61))
    assert (d.verdict, d.reason, d.target) == (Verdict.ROLLBACK, "ProgressDeadlineExceeded", 1)
    assert "60s" in d.message


def test_deadline_reported_by_the_deployment_controller() -> None:
    d = run(deployment=dep(deadline_exceeded=True), started_at=None)
    assert (d.verdict, d.target) == (Verdict.ROLLBACK, 1)
    # ...but not a stale condition from the Deployment's previous template.
    stale = run(deployment=dep(revision=1, deadline_exceeded=True), started_at=None)
    assert stale.verdict == Verdict.WAIT


def test_crash_loop_rolls_back_at_once() -> None:
    waiting = [PodState("p", 2, ready=False, restarts=1, waiting_reason="CrashLoopBackOff")]
    d = run(pods=waiting)
    assert (d.verdict, d.reason, d.target) == (Verdict.ROLLBACK, "CrashLoop", 1)
    restarts = [PodState("p", 2, ready=False, restarts=3)]
    assert run(pods=restarts).verdict == Verdict.ROLLBACK
    # Pods of another revision don't count.
    other = [PodState("p", 1, ready=False, restarts=9, waiting_reason="CrashLoopBackOff")]
    assert run(pods=other).verdict == Verdict.WAIT


def test_without_a_healthy_revision_the_new_one_fails_in_place() -> None:
    d = run(revisions=[rev(1, RevisionPhase.PROGRESSING)], current=1, deployment=dep(1),
            started_at=NOW - timedelta(minutes=5))  # fmt: skip
    assert (d.verdict, d.target) == (Verdict.FAIL, None)


def test_auto_rollback_disabled_only_fails() -> None:
    rollout = Rollout.model_validate(
        {"progressDeadlineSeconds": 60, "autoRollback": {"enabled": False}}
    )
    d = run(rollout=rollout, started_at=NOW - timedelta(minutes=5))
    assert d.verdict == Verdict.FAIL


def test_a_failed_revision_that_becomes_ready_is_healthy_after_all() -> None:
    history = [rev(1, RevisionPhase.FAILED)]
    d = run(revisions=history, current=1, deployment=dep(1, ready=2))
    assert d.verdict == Verdict.HEALTHY


def test_load_reports_feed_the_error_rate_and_latency_thresholds() -> None:
    store = LoadReportStore()
    rollout = Rollout.model_validate(
        {"autoRollback": {"maxErrorRate": 0.1, "maxP95LatencyMs": 500, "minRequests": 20}}
    )
    healthy_now = [rev(1, RevisionPhase.HEALTHY), rev(2, RevisionPhase.HEALTHY)]

    def report(source: str, requests: int, errors: int, p95: float, revision: int = 2) -> None:
        store.add(
            LoadReport("ai", "llama", source, NOW - timedelta(seconds=5), revision=revision,
                       requests=requests, errors=errors, p95_latency_ms=p95)
        )  # fmt: skip

    def verdict() -> Any:
        health = store.revision_health("ai", "llama", 2, NOW)
        return run(revisions=healthy_now, deployment=dep(ready=2), health=health, rollout=rollout)

    report("a", 10, 5, 100)  # 50% errors but only 10 requests: not enough to judge
    assert verdict().verdict == Verdict.WAIT
    report("b", 90, 2, 100)  # 7 of 100 = 7%: under the limit
    assert verdict().verdict == Verdict.WAIT
    report("c", 20, 10, 100)  # 17 of 120 > 10%
    d = verdict()
    assert (d.verdict, d.reason, d.target) == (Verdict.ROLLBACK, "ErrorRateExceeded", 1)

    store2 = LoadReportStore()
    store2.add(LoadReport("ai", "llama", "a", NOW, revision=2, requests=50, p95_latency_ms=900))
    store2.add(LoadReport("ai", "llama", "a", NOW, revision=1, requests=50, errors=50))
    health = store2.revision_health("ai", "llama", 2, NOW)
    d = run(revisions=healthy_now, deployment=dep(ready=2), health=health, rollout=rollout)
    assert (d.verdict, d.reason) == (Verdict.ROLLBACK, "LatencyExceeded")


def test_old_reports_expire() -> None:
    store = LoadReportStore(window=timedelta(minutes=1))
    store.add(LoadReport("ai", "llama", "a", NOW - timedelta(minutes=2), revision=2, requests=99,
                         errors=99))  # fmt: skip
    assert store.revision_health("ai", "llama", 2, NOW) is None


def test_traffic_alone_never_rolls_back_without_a_healthy_alternative() -> None:
    store = LoadReportStore()
    store.add(LoadReport("ai", "llama", "a", NOW, revision=1, requests=100, errors=100))
    history = [rev(1, RevisionPhase.HEALTHY)]
    d = run(revisions=history, current=1, deployment=dep(1, ready=2),
            health=store.revision_health("ai", "llama", 1, NOW))  # fmt: skip
    assert d.verdict == Verdict.WAIT
