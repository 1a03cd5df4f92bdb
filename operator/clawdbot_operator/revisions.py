"""Revisions: which spec changes make a new one, their history, and their snapshots.

A revision is the part of the spec that shapes the pod template (model, runtime, precision,
accelerator, batching, image, args, resources, placement) plus the requested pod annotations,
with the image resolved. Replica counts, autoscaling and rollout settings are not part of
it: scaling is never a rollout. The SHA-256 of the canonical JSON of that part is the
revision hash; a spec with a hash not seen before gets the next revision number.

Each revision's exact settings are kept in an apps/v1 ControllerRevision owned by the
ModelDeployment (as StatefulSets and DaemonSets do), so a rollback can rebuild the pods of
an older revision while spec already says something else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from clawdbot_api.v1alpha1 import (
    ModelDeployment,
    ModelDeploymentSpec,
    Revision,
    RevisionPhase,
)
from clawdbot_operator.builders.deployment import resolved_image
from clawdbot_operator.builders.meta import (
    ANNOTATION_POD_ANNOTATIONS,
    ANNOTATION_REVISION_HASH,
    LABEL_REVISION,
    Manifest,
    name_of,
    namespace_of,
    owner_reference,
    pod_annotations,
    selector_labels,
)
from clawdbot_operator.config import OperatorConfig
from clawdbot_operator.validation import InvalidSpec

TEMPLATE_FIELDS: Final = (
    "model",
    "runtime",
    "precision",
    "accelerator",
    "cpuThreads",
    "batching",
    "image",
    "args",
    "resources",
    "nodeSelector",
    "tolerations",
)
"""spec fields (wire names) that make up a revision."""
HASH_CHARS: Final = 16


def snapshot(md: ModelDeployment, config: OperatorConfig) -> dict[str, Any]:
    """The revision-relevant settings of ``md``, JSON-ready, image resolved."""
    spec = md.spec.to_manifest()
    kept = {k: spec[k] for k in TEMPLATE_FIELDS if k in spec}
    kept["image"] = resolved_image(md, config)
    return {"spec": kept, "podAnnotations": pod_annotations(md)}


def revision_hash(snap: dict[str, Any]) -> str:
    """A short, stable hash of a snapshot (key order and whitespace don't matter)."""
    canonical = json.dumps(snap, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_CHARS]


def apply_snapshot(md: ModelDeployment, snap: dict[str, Any]) -> ModelDeployment:
    """``md`` with its revision-relevant settings replaced by a snapshot's (for a rollback)."""
    spec = {k: v for k, v in md.spec.to_manifest().items() if k not in TEMPLATE_FIELDS}
    spec.update(snap["spec"])
    annotations = dict(md.metadata.annotations)
    annotations.pop(ANNOTATION_POD_ANNOTATIONS, None)
    if snap.get("podAnnotations"):
        annotations[ANNOTATION_POD_ANNOTATIONS] = json.dumps(snap["podAnnotations"])
    meta = md.metadata.model_copy(update={"annotations": annotations})
    return md.model_copy(
        update={"spec": ModelDeploymentSpec.model_validate(spec), "metadata": meta}
    )


def controller_revision_name(md: ModelDeployment, revision: int) -> str:
    """Name of the ControllerRevision holding one revision's snapshot."""
    return f"{name_of(md)}-r{revision}"


def build_controller_revision(md: ModelDeployment, revision: int, snap: dict[str, Any]) -> Manifest:
    """The apps/v1 ControllerRevision recording one revision."""
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": controller_revision_name(md, revision),
            "namespace": namespace_of(md),
            "labels": {**selector_labels(md), LABEL_REVISION: str(revision)},
            "annotations": {ANNOTATION_REVISION_HASH: revision_hash(snap)},
            "ownerReferences": [owner_reference(md)],
        },
        "revision": revision,
        "data": snap,
    }


@dataclass(frozen=True)
class PlannedEvent:
    """A Kubernetes Event to post about the ModelDeployment."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class RevisionPlan:
    """What the history looks like after taking the spec into account."""

    revisions: list[Revision]
    current: int
    stable: int | None
    create: int | None = None
    """Revision whose ControllerRevision must be written (a new one)."""
    pruned: list[int] = field(default_factory=list)
    """Revisions dropped from the history (their ControllerRevisions go too)."""
    started: bool = False
    """The current revision changed: a rollout begins now."""
    events: list[PlannedEvent] = field(default_factory=list)


def find(revisions: list[Revision], number: int | None) -> Revision | None:
    """The revision with this number, if recorded."""
    return next((r for r in revisions if r.revision == number), None)


def _set(rev: Revision, phase: RevisionPhase, reason: str) -> Revision:
    return rev.model_copy(update={"phase": phase, "reason": reason})


def _replace(revisions: list[Revision], rev: Revision) -> list[Revision]:
    return [rev if r.revision == rev.revision else r for r in revisions]


@dataclass
class _Planner:
    """The history as :func:`plan_revisions` rewrites it, one step at a time."""

    revs: list[Revision]
    current: int | None
    stable: int | None
    create: int | None = None
    started: bool = False
    events: list[PlannedEvent] = field(default_factory=list)

    def leave_current(self, reason: str, to: int) -> None:
        """The current revision gives way to ``to``."""
        cur = find(self.revs, self.current)
        if cur is None or cur.revision == to:
            return
        if reason == "RollbackRequested":
            self.revs = _replace(self.revs, _set(cur, RevisionPhase.ROLLED_BACK, reason))
        elif cur.phase == RevisionPhase.PROGRESSING:
            self.revs = _replace(self.revs, _set(cur, RevisionPhase.SUPERSEDED, reason))

    def activate(self, rev: Revision, reason: str) -> None:
        """Make ``rev`` current; a rollout to it starts."""
        # A revision that proved healthy keeps that standing (it stays a rollback target).
        if rev.phase != RevisionPhase.HEALTHY:
            rev = _set(rev, RevisionPhase.PROGRESSING, reason)
        self.revs = _replace(self.revs, rev)
        self.current, self.started = rev.revision, True

    def roll_back_to(self, number: int, snapshots: frozenset[int]) -> InvalidSpec | None:
        """``spec.rollbackTo``: that revision becomes current (its snapshot must exist)."""
        target = find(self.revs, number)
        if target is None or number not in snapshots:
            kept = ", ".join(str(r.revision) for r in self.revs if r.revision in snapshots)
            return InvalidSpec(
                "spec.rollbackTo",
                f"revision {number} is not in the history (kept: {kept or 'none'})",
            )
        if target.revision == self.current:
            return None
        self.leave_current("RollbackRequested", target.revision)
        self.activate(target, "RollbackRequested")
        if target.phase == RevisionPhase.HEALTHY:
            self.stable = target.revision
        self.events.append(
            PlannedEvent(
                "Normal",
                "RollbackRequested",
                f"Rolling back to revision {target.revision} as spec.rollbackTo asks.",
            )
        )
        return None

    def follow_spec(self, desired_hash: str, model_version: str, image: str, now: datetime) -> None:
        """A new hash is a new revision; a known hash makes its revision current again,
        unless that revision failed or was rolled back."""
        match = max(
            (r for r in self.revs if r.hash == desired_hash),
            key=lambda r: r.revision,
            default=None,
        )
        if match is None:
            number = max((r.revision for r in self.revs), default=0) + 1
            self.leave_current("Superseded", number)
            self.revs.append(
                Revision(
                    revision=number,
                    hash=desired_hash,
                    model_version=model_version,
                    image=image,
                    phase=RevisionPhase.PROGRESSING,
                    reason="NewRevision",
                    created_at=now,
                )
            )
            self.current, self.create, self.started = number, number, True
            message = f"Created revision {number} (model version {model_version})."
            self.events.append(PlannedEvent("Normal", "NewRevision", message))
            return
        refused = (RevisionPhase.FAILED, RevisionPhase.ROLLED_BACK)
        if match.revision == self.current or match.phase in refused:
            return
        self.leave_current("Superseded", match.revision)
        self.activate(match, "SpecMatchesRevision")
        message = f"The spec matches revision {match.revision} again; rolling out to it."
        self.events.append(PlannedEvent("Normal", "RevisionReactivated", message))

    def prune(self, history_limit: int) -> list[int]:
        """Drop the oldest revisions beyond the limit (never the current or stable one)."""
        self.revs.sort(key=lambda r: r.revision)
        pruned: list[int] = []
        keep = {self.current, self.stable}
        while len(self.revs) > history_limit:
            oldest = next((r for r in self.revs if r.revision not in keep), None)
            if oldest is None:
                break
            self.revs.remove(oldest)
            pruned.append(oldest.revision)
        return pruned


def plan_revisions(
    *,
    history: list[Revision],
    current: int | None,
    stable: int | None,
    desired_hash: str,
    model_version: str,
    image: str,
    now: datetime,
    history_limit: int,
    rollback_to: int | None = None,
    snapshots: frozenset[int] = frozenset(),
) -> RevisionPlan | InvalidSpec:
    """Decide the current revision for the spec (pure).

    * ``rollback_to`` set: that revision becomes current (its snapshot must exist).
    * a new hash: the next number, phase Progressing.
    * the hash of a Healthy or Superseded revision: it becomes current again.
    * the hash of a Failed or RolledBack revision: nothing changes; it is not retried until
      the spec changes again or ``rollbackTo`` names it.
    """
    planner = _Planner(list(history), current, stable)
    if rollback_to is not None:
        invalid = planner.roll_back_to(rollback_to, snapshots)
        if invalid is not None:
            return invalid
    else:
        planner.follow_spec(desired_hash, model_version, image, now)
    assert planner.current is not None
    pruned = planner.prune(history_limit)
    return RevisionPlan(
        planner.revs,
        planner.current,
        planner.stable,
        planner.create,
        pruned,
        planner.started,
        planner.events,
    )
