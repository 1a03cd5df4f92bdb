"""Revision hashing, numbering, history bound, manual rollback, snapshots."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from md_support import model_deployment

from clawdbot_api.v1alpha1 import Revision, RevisionPhase
from clawdbot_operator.config import OperatorConfig
from clawdbot_operator.revisions import (
    RevisionPlan,
    apply_snapshot,
    build_controller_revision,
    plan_revisions,
    revision_hash,
    snapshot,
)
from clawdbot_operator.validation import InvalidSpec

CONFIG = OperatorConfig()
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def h(**spec: Any) -> str:
    return revision_hash(snapshot(model_deployment(**spec), CONFIG))


BASE = h()


@pytest.mark.parametrize(
    "change",
    [
        {"replicas": 5},
        {"autoscaling": {"maxReplicas": 8}},
        {"rollout": {"progressDeadlineSeconds": 60, "historyLimit": 3}},
        {"rollbackTo": 1},
    ],
    ids=["replicas", "autoscaling", "rollout", "rollbackTo"],
)
def test_scaling_and_rollout_settings_are_not_a_new_revision(change: dict[str, Any]) -> None:
    assert h(**change) == BASE


@pytest.mark.parametrize(
    "change",
    [
        {"model": {"name": "llama-7b", "uri": "pvc://models/llama-7b", "version": "2"}},
        {"model": {"name": "llama-7b", "uri": "pvc://models/llama-8b"}},
        {"precision": "bf16"},
        {"accelerator": {"type": "nvidia", "count": 2}},
        {"accelerator": {"type": "nvidia", "memoryFraction": 0.5}},
        {"batching": {"maxBatchSize": 8}},
        {"image": "example/vllm:2"},
        {"args": ["--enforce-eager"]},
        {"resources": {"requests": {"memory": "20Gi"}}},
        {"tolerations": [{"key": "dedicated", "operator": "Exists"}]},
        {"cpuThreads": 4},
        {"nodeSelector": {"pool": "a"}},
    ],
    ids=lambda c: next(iter(c)),
)
def test_model_and_runtime_settings_are_a_new_revision(change: dict[str, Any]) -> None:
    assert h(**change) != BASE


def test_pod_annotations_and_configured_image_are_part_of_the_revision() -> None:
    annotated = model_deployment(annotations={"clawdbot.io/pod-annotations": '{"a": "b"}'})
    assert revision_hash(snapshot(annotated, CONFIG)) != BASE
    unrelated = model_deployment(annotations={"team": "ml"})
    assert revision_hash(snapshot(unrelated, CONFIG)) == BASE
    other = OperatorConfig.from_mapping({"image_vllm_nvidia": "site/vllm:2"})
    assert revision_hash(snapshot(model_deployment(), other)) != BASE


def test_hash_ignores_key_order() -> None:
    assert revision_hash({"a": 1, "b": {"c": 2, "d": 3}}) == revision_hash(
        {"b": {"d": 3, "c": 2}, "a": 1}
    )


def rev(n: int, phase: RevisionPhase, hash_: str | None = None) -> Revision:
    return Revision(
        revision=n,
        hash=hash_ or f"h{n}",
        model_version=str(n),
        phase=phase,
        created_at=NOW,
    )


def plan(history: list[Revision], current: int | None, desired: str, **kw: Any) -> RevisionPlan:
    kw.setdefault("stable", None)
    kw.setdefault("history_limit", 10)
    result = plan_revisions(
        history=history,
        current=current,
        desired_hash=desired,
        model_version="v",
        image="img",
        now=NOW,
        **kw,
    )
    assert isinstance(result, RevisionPlan)
    return result


def test_first_revision() -> None:
    p = plan([], None, "h1")
    assert (p.current, p.create, p.started) == (1, 1, True)
    assert p.revisions[0].phase == RevisionPhase.PROGRESSING
    assert p.events[0].reason == "NewRevision"


def test_same_hash_changes_nothing() -> None:
    history = [rev(1, RevisionPhase.HEALTHY)]
    p = plan(history, 1, "h1", stable=1)
    assert (p.current, p.create, p.started, p.events) == (1, None, False, [])
    assert p.revisions == history


def test_new_hash_is_the_next_number_and_supersedes_an_unfinished_rollout() -> None:
    history = [rev(1, RevisionPhase.HEALTHY), rev(2, RevisionPhase.PROGRESSING)]
    p = plan(history, 2, "h3", stable=1)
    assert (p.current, p.create) == (3, 3)
    assert [r.phase for r in p.revisions] == [
        RevisionPhase.HEALTHY,
        RevisionPhase.SUPERSEDED,
        RevisionPhase.PROGRESSING,
    ]


def test_history_is_bounded_but_keeps_current_and_stable() -> None:
    history = [rev(n, RevisionPhase.HEALTHY) for n in range(1, 6)]
    p = plan(history, 5, "h6", stable=1, history_limit=3)
    assert [r.revision for r in p.revisions] == [1, 5, 6]
    assert p.pruned == [2, 3, 4]


def test_a_rolled_back_revision_is_not_retried_for_the_same_spec() -> None:
    history = [rev(1, RevisionPhase.HEALTHY), rev(2, RevisionPhase.ROLLED_BACK)]
    p = plan(history, 1, "h2", stable=1)
    assert (p.current, p.create, p.started) == (1, None, False)


def test_going_back_to_an_earlier_spec_reactivates_its_revision() -> None:
    history = [rev(1, RevisionPhase.HEALTHY), rev(2, RevisionPhase.HEALTHY)]
    p = plan(history, 2, "h1", stable=2)
    assert (p.current, p.create, p.started) == (1, None, True)
    assert p.events[0].reason == "RevisionReactivated"


def test_rollback_to_on_request() -> None:
    history = [rev(1, RevisionPhase.HEALTHY), rev(2, RevisionPhase.HEALTHY)]
    p = plan(history, 2, "h2", stable=2, rollback_to=1, snapshots=frozenset({1, 2}))
    assert (p.current, p.stable, p.started) == (1, 1, True)
    assert p.revisions[1].phase == RevisionPhase.ROLLED_BACK
    assert p.revisions[1].reason == "RollbackRequested"
    assert p.events[0].reason == "RollbackRequested"


def test_rollback_to_an_unknown_revision_names_the_field() -> None:
    result = plan_revisions(
        history=[rev(1, RevisionPhase.HEALTHY)],
        current=1,
        stable=1,
        desired_hash="h1",
        model_version="1",
        image="img",
        now=NOW,
        history_limit=10,
        rollback_to=7,
        snapshots=frozenset({1}),
    )
    assert isinstance(result, InvalidSpec)
    assert result.field == "spec.rollbackTo" and "kept: 1" in result.message


def test_snapshot_round_trip_restores_an_older_revision() -> None:
    old = model_deployment(
        annotations={"clawdbot.io/pod-annotations": json.dumps({"x": "1"})}, precision="bf16"
    )
    snap = snapshot(old, CONFIG)
    new = model_deployment(
        replicas=4,
        precision="fp8",
        model={"name": "llama-7b", "uri": "pvc://models/llama-7b", "version": "9"},
    )
    restored = apply_snapshot(new, snap)
    assert restored.spec.precision.value == "bf16"
    assert restored.spec.model.version == "1"
    assert restored.spec.replicas == 4  # scaling comes from the current spec
    assert revision_hash(snapshot(restored, CONFIG)) == revision_hash(snap)
    cr = build_controller_revision(new, 3, snap)
    assert (cr["kind"], cr["revision"], cr["metadata"]["name"]) == (
        "ControllerRevision",
        3,
        "llama-r3",
    )
    assert cr["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
