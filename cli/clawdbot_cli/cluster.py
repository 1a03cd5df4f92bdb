"""The cluster side of the ``clawdbot`` command: ``status``, ``rollback`` and ``decisions``.

They talk to the API server with the user's kubeconfig (``--kubeconfig``, else
``$KUBECONFIG``, else ``~/.kube/config``; ``--context`` picks a context; the namespace is
``-n``, else the context's, else ``default``), through the operator's own client
(``clawdbot_operator.kube``), so no ``kubectl`` is needed; what they read is parsed with the
API types (``clawdbot_api.v1alpha1``), the same the operator writes with.

* ``clawdbot status [-n NS | -A] [--wide]``: ModelDeployments (phase, ready/desired
  replicas, current and stable revision, the latest condition's message) and
  RoutingPolicies (Ready, matched pods, ready endpoints) as kubectl-style tables.
* ``clawdbot rollback MD --to-revision N [--timeout S]``: sets ``spec.rollbackTo`` (after
  checking that ``status.revisions`` still holds N), prints a progress line whenever the
  operator's report changes, and returns once the operator has taken the request (cleared
  ``spec.rollbackTo``, ``status.currentRevision`` N) and the revision is Available with all
  replicas updated and ready and no other revision's pod left; exit 1 when the operator
  refuses it (InvalidSpec), the revision fails, or the timeout passes.
* ``clawdbot decisions POD``: the sidecar binds 127.0.0.1 inside its pod, so its metrics
  are out of the API server's pod proxy's reach; its audit log is not: by default the
  sidecar writes it to stdout, one hash-chained JSON line per routing decision, and the
  container log holds it. This reads the ``clawdbot-sidecar`` container's log (what
  ``kubectl logs POD -c clawdbot-sidecar`` prints; ``--previous`` for the last restart,
  ``--file`` for a saved copy), summarises the decisions by target and reason and verifies
  the hash chain (``--hmac-key-file`` when the policy sets an audit HMAC key). Exit 1 when
  the chain is broken.

As a kubectl plugin (``kubectl clawdbot status``): put ``cli/kubectl-clawdbot`` (a shim
that runs ``clawdbot``) on PATH, or link the console script under that name, e.g.
``ln -s "$PWD/.venv/bin/clawdbot" ~/.local/bin/kubectl-clawdbot``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TextIO, TypeVar

from pydantic import BaseModel, ValidationError

from clawdbot_api.v1alpha1 import (
    API_VERSION,
    Condition,
    ModelDeployment,
    ModelDeploymentStatus,
    ObjectMeta,
    RoutingPolicyStatus,
)

if TYPE_CHECKING:
    from clawdbot_operator.kube import Kube

# The operator's client (kubernetes_asyncio) and the sidecar's audit module are imported
# where a subcommand uses them: the runtime image ships this CLI for `clawdbot compress`
# alone, without the operator's or the sidecar's dependencies.

Obj = dict[str, Any]

MODEL_DEPLOYMENT: Final = "ModelDeployment"
ROUTING_POLICY: Final = "RoutingPolicy"
FIELD_MANAGER: Final = "clawdbot-cli"
SIDECAR_CONTAINER: Final = "clawdbot-sidecar"
NONE: Final = "<none>"
MESSAGE_WIDTH: Final = 60
"""Condition messages are cut to this in tables (``--wide`` shows them whole)."""
DEFAULT_ROLLBACK_TIMEOUT_S: Final = 300.0
POLL_S: Final = 1.0


class ClusterError(Exception):
    """A request failed or the cluster said no; the message says which and why."""


class Api(Protocol):
    """The API calls the subcommands make: the operator's client (``clawdbot_operator.kube``),
    or a fake one in tests."""

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        """One object; None when it does not exist."""
        ...

    async def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[Obj]:
        """Objects of one kind, in ``namespace`` or (None) every namespace."""
        ...

    async def patch_model_deployment(
        self, namespace: str, name: str, patch: Obj, *, status: bool = False
    ) -> Obj:
        """JSON merge patch of a ModelDeployment."""
        ...

    async def pod_log(
        self, namespace: str, pod: str, container: str, previous: bool = False
    ) -> str:
        """The log of one container of a pod."""
        ...


# --- the real API ------------------------------------------------------------------------


def kubeconfig_path(flag: str | None) -> str:
    """--kubeconfig, else the first file of $KUBECONFIG, else ~/.kube/config."""
    if flag:
        return flag
    env = os.environ.get("KUBECONFIG", "")
    first = next((p for p in env.split(os.pathsep) if p), None)
    return first or str(Path("~/.kube/config").expanduser())


def context_namespace(config_file: str, context: str | None) -> str:
    """The namespace of the kubeconfig's context (``context`` or the current one)."""
    from kubernetes_asyncio import config as k8s_config  # noqa: PLC0415

    try:
        contexts, active = k8s_config.list_kube_config_contexts(config_file)
    except Exception:  # a missing or odd kubeconfig: the connection reports it better
        return "default"
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else "default"


async def connect_kube(kubeconfig: str, context: str | None) -> Kube:
    """The operator's API client, logged in with the user's kubeconfig."""
    from kubernetes_asyncio import config as k8s_config  # noqa: PLC0415

    from clawdbot_operator.kube import Kube, connect  # noqa: PLC0415

    try:
        api = await connect(kubeconfig, context)
    except (OSError, k8s_config.ConfigException) as exc:
        raise ClusterError(f"cannot load kubeconfig {kubeconfig}: {exc}") from exc
    return Kube(api, FIELD_MANAGER)


async def _called(call: Awaitable[Any]) -> Any:
    """An API call's result; its failure as a ClusterError in the API server's words."""
    from clawdbot_operator.kube import KubeError  # noqa: PLC0415

    try:
        return await call
    except KubeError as exc:
        raise ClusterError(f"{exc.reason} (HTTP {exc.status})") from exc
    except OSError as exc:  # aiohttp's connection errors are OSErrors
        raise ClusterError(f"cannot reach the API server: {exc}") from exc


async def _get_model_deployment(api: Api, namespace: str, name: str) -> Obj:
    found: Obj | None = await _called(api.get(API_VERSION, MODEL_DEPLOYMENT, namespace, name))
    if found is None:
        raise ClusterError(
            f'modeldeployments.clawdbot.io "{name}" not found in namespace {namespace}'
        )
    return found


# --- typed views -------------------------------------------------------------------------


M = TypeVar("M", bound=BaseModel)


def _typed(model: type[M], data: Any) -> M:
    """``data`` parsed as ``model``; an unreadable value reads as the model's defaults."""
    try:
        return model.model_validate(data or {})
    except ValidationError:
        return model()


@dataclass(frozen=True)
class ModelDeploymentView:
    """A ModelDeployment as the tables and the rollback wait read it: typed metadata and
    status, and the two spec fields they need."""

    meta: ObjectMeta
    status: ModelDeploymentStatus
    desired: int
    """spec.replicas (the HPA writes it through the scale subresource)."""
    rollback_to: int | None

    @classmethod
    def of(cls, obj: Obj) -> ModelDeploymentView:
        try:
            md = ModelDeployment.model_validate(
                {k: v for k, v in obj.items() if k in ("metadata", "spec", "status")}
            )
        except ValidationError:
            # A spec this version's types refuse (the operator says why in its status):
            # the table still shows the object, its status and its replica count.
            spec = obj.get("spec") or {}
            replicas = spec.get("replicas", 1)
            return cls(
                _typed(ObjectMeta, obj.get("metadata")),
                _typed(ModelDeploymentStatus, obj.get("status")),
                replicas if isinstance(replicas, int) else 1,
                spec.get("rollbackTo") if isinstance(spec.get("rollbackTo"), int) else None,
            )
        return cls(
            md.metadata,
            md.status or ModelDeploymentStatus(),
            md.spec.replicas,
            md.spec.rollback_to,
        )


def condition(conditions: Sequence[Condition], kind: str) -> Condition | None:
    """The condition of type ``kind``, if the status has one."""
    return next((c for c in conditions if c.type == kind), None)


def last_condition_message(conditions: Sequence[Condition]) -> str:
    """The message of the condition that changed last (the later one on a tie)."""
    with_message = [c for c in conditions if c.message]
    if not with_message:
        return ""
    latest = max(enumerate(with_message), key=lambda ic: (ic[1].last_transition_time, ic[0]))
    return latest[1].message


# --- tables ------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns three spaces apart, as ``kubectl get`` prints them."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [list(headers), *rows]
    ]
    return "\n".join(lines)


def _cut(text: str, width: int | None) -> str:
    text = " ".join(text.split())  # one line
    if width is None or len(text) <= width:
        return text
    return text[: width - 3] + "..."


def _revision(value: int | None) -> str:
    return str(value) if value is not None else NONE


def _sort_key(meta: ObjectMeta) -> tuple[str, str]:
    return meta.namespace or "", meta.name or ""


def model_deployment_rows(
    items: Iterable[Obj], *, all_namespaces: bool, wide: bool
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the ModelDeployment table, sorted by namespace and name."""
    headers = ["NAME", "PHASE", "READY", "CURRENT", "STABLE", "MESSAGE"]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    rows: list[list[str]] = []
    for md in sorted((ModelDeploymentView.of(i) for i in items), key=lambda v: _sort_key(v.meta)):
        st = md.status
        row = [
            md.meta.name or "",
            st.phase.value,
            f"{st.ready_replicas}/{md.desired}",
            _revision(st.current_revision),
            _revision(st.stable_revision),
            _cut(last_condition_message(st.conditions), None if wide else MESSAGE_WIDTH),
        ]
        if all_namespaces:
            row.insert(0, md.meta.namespace or "")
        rows.append(row)
    return headers, rows


def routing_policy_rows(
    items: Iterable[Obj], *, all_namespaces: bool, wide: bool
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the RoutingPolicy table, sorted by namespace and name."""
    headers = ["NAME", "READY", "MATCHED PODS", "READY ENDPOINTS", "MESSAGE"]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    views = [
        (_typed(ObjectMeta, rp.get("metadata")), _typed(RoutingPolicyStatus, rp.get("status")))
        for rp in items
    ]
    rows: list[list[str]] = []
    for meta, st in sorted(views, key=lambda v: _sort_key(v[0])):
        ready = condition(st.conditions, "Ready")
        row = [
            meta.name or "",
            ready.status.value if ready else "Unknown",
            str(st.matched_pods),
            str(st.ready_endpoints),
            _cut(last_condition_message(st.conditions), None if wide else MESSAGE_WIDTH),
        ]
        if all_namespaces:
            row.insert(0, meta.namespace or "")
        rows.append(row)
    return headers, rows


async def status(
    api: Api, namespace: str | None, *, wide: bool = False, out: TextIO | None = None
) -> int:
    """Print the ModelDeployment and RoutingPolicy tables (``namespace`` None: all)."""
    out = out or sys.stdout
    everywhere = namespace is None
    where = "any namespace" if everywhere else f"namespace {namespace}"
    mds = await _called(api.list(API_VERSION, MODEL_DEPLOYMENT, namespace))
    rps = await _called(api.list(API_VERSION, ROUTING_POLICY, namespace))
    sections: list[str] = []
    for title, items, build in (
        ("ModelDeployments", mds, model_deployment_rows),
        ("RoutingPolicies", rps, routing_policy_rows),
    ):
        if not items:
            sections.append(f"No {title} found in {where}.")
            continue
        headers, rows = build(items, all_namespaces=everywhere, wide=wide)
        sections.append(f"{title}:\n{format_table(headers, rows)}")
    print("\n\n".join(sections), file=out)
    return 0


# --- rollback ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RollbackView:
    """What the rollback wait looks at in a ModelDeployment."""

    pending: bool
    """spec.rollbackTo still set: the operator has not taken the request yet."""
    phase: str
    current: int | None
    replicas: int
    """Pods of the ModelDeployment, old revisions' included."""
    ready: int
    updated: int
    desired: int
    observed: bool
    """status.observedGeneration has caught up with metadata.generation."""
    invalid: str | None
    """The operator's InvalidSpec message, when it refused the spec."""
    revisions: dict[int, str]
    """Phase of every revision in status.revisions."""
    message: str
    """The message of the condition that changed last."""

    @classmethod
    def of(cls, obj: Obj) -> RollbackView:
        md = ModelDeploymentView.of(obj)
        st = md.status
        ready = condition(st.conditions, "Ready")
        refused = ready is not None and ready.status == "False" and ready.reason == "InvalidSpec"
        return cls(
            pending=md.rollback_to is not None,
            phase=st.phase.value,
            current=st.current_revision,
            replicas=st.replicas,
            ready=st.ready_replicas,
            updated=st.updated_replicas,
            desired=md.desired,
            observed=st.observed_generation == md.meta.generation,
            invalid=(ready.message or "InvalidSpec") if refused and ready else None,
            revisions={r.revision: r.phase.value for r in st.revisions},
            message=last_condition_message(st.conditions),
        )

    def taken(self, revision: int) -> bool:
        """The operator cleared the request and made ``revision`` current."""
        return not self.pending and self.current == revision

    def done(self, revision: int) -> bool:
        """Taken, and the revision is Available with every replica updated and ready, and no
        pod of another revision left."""
        return (
            self.taken(revision)
            and self.observed
            and self.phase == "Available"
            and self.replicas == self.desired
            and self.ready >= self.desired
            and self.updated >= self.desired
        )

    def line(self, revision: int) -> str:
        step = "requested" if self.pending else "taken by the operator"
        return (
            f"rollback to revision {revision}: {step}; phase {self.phase}, current revision "
            f"{_revision(self.current)}, {self.ready}/{self.desired} ready, "
            f"{self.updated}/{self.desired} updated, {self.replicas} pods"
        )


async def rollback(
    api: Api,
    namespace: str,
    name: str,
    revision: int,
    *,
    wait_s: float = DEFAULT_ROLLBACK_TIMEOUT_S,
    poll: float = POLL_S,
    out: TextIO | None = None,
    err: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Set spec.rollbackTo and follow the operator until done, refused or ``wait_s`` passed."""
    out, err = out or sys.stdout, err or sys.stderr
    view = RollbackView.of(await _get_model_deployment(api, namespace, name))
    if revision not in view.revisions:
        listed = ", ".join(map(str, sorted(view.revisions))) or "none"
        print(
            f"error: modeldeployment {namespace}/{name} has no revision {revision} in "
            f"status.revisions (kept: {listed})",
            file=err,
        )
        return 1
    if view.current == revision and not view.pending:
        print(f"modeldeployment {namespace}/{name} already runs revision {revision}", file=out)
        return 0
    patch = {"spec": {"rollbackTo": revision}}
    await _called(api.patch_model_deployment(namespace, name, patch))
    print(f"modeldeployment {namespace}/{name}: spec.rollbackTo set to {revision}", file=out)
    deadline = clock() + wait_s
    shown = ""
    while True:
        view = RollbackView.of(await _get_model_deployment(api, namespace, name))
        line = view.line(revision)
        if line != shown:
            print(line, file=out, flush=True)
            shown = line
        problem = _rollback_problem(view, revision)
        if problem is not None:
            print(f"error: {problem}", file=err)
            return 1
        if view.done(revision):
            print(
                f"modeldeployment {namespace}/{name} rolled back to revision {revision} "
                f"({view.ready}/{view.desired} ready)",
                file=out,
            )
            return 0
        if clock() >= deadline:
            print(
                f"error: timed out after {wait_s:g}s waiting for the rollback to revision "
                f"{revision}; last seen: {line}",
                file=err,
            )
            return 1
        await sleep(poll)


def _rollback_problem(view: RollbackView, revision: int) -> str | None:
    """Why the rollback can't end well, if the operator said so."""
    if view.invalid is not None and view.pending:
        return f"the operator refused the rollback: {view.invalid}"
    if view.taken(revision) and view.revisions.get(revision) == "Failed":
        return f"revision {revision} failed: {view.message}"
    return None


# --- decisions ---------------------------------------------------------------------------


@dataclass
class DecisionGroup:
    """The decisions of one (target, reason)."""

    count: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0

    def add(self, record: Obj) -> None:
        self.count += 1
        self.cache_hits += bool(record.get("cache_hit"))
        self.prompt_tokens += int(record.get("prompt_tokens") or 0)
        self.completion_tokens += int(record.get("completion_tokens") or 0)
        self.latency_ms += float(record.get("latency_ms") or 0.0)


@dataclass
class AuditLines:
    """The audit records found in a container log, and where each was."""

    lines: list[str] = field(default_factory=list)
    """The records' raw lines, in log order."""
    numbers: list[int] = field(default_factory=list)
    """The log line number (1-based) of each record."""
    records: list[Obj] = field(default_factory=list)


def audit_lines(log_text: str) -> AuditLines:
    """Pick the audit records (JSON objects with seq, prev and hash) out of a container log.

    The sidecar's own log lines share the stream; they are not part of the chain.
    """
    found = AuditLines()
    for number, raw in enumerate(log_text.splitlines(), 1):
        text = raw.strip()
        if not text.startswith("{"):
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if isinstance(obj, dict) and all(k in obj for k in ("seq", "prev", "hash")):
            found.lines.append(text)
            found.numbers.append(number)
            found.records.append(obj)
    return found


def summarise(records: Iterable[Obj]) -> dict[tuple[str, str], DecisionGroup]:
    """Decision records grouped by (target, reason)."""
    groups: dict[tuple[str, str], DecisionGroup] = {}
    for record in records:
        if record.get("kind") != "decision":
            continue
        key = (str(record.get("target", "")), str(record.get("reason", "")))
        groups.setdefault(key, DecisionGroup()).add(record)
    return groups


def decision_rows(groups: dict[tuple[str, str], DecisionGroup]) -> list[list[str]]:
    """Table rows, most frequent first."""
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1].count, kv[0]))
    return [
        [
            target,
            reason,
            str(g.count),
            str(g.cache_hits),
            str(g.prompt_tokens),
            str(g.completion_tokens),
            f"{g.latency_ms / g.count:.1f}",
        ]
        for (target, reason), g in ordered
    ]


DECISION_HEADERS: Final = (
    "TARGET",
    "REASON",
    "DECISIONS",
    "CACHE HITS",
    "PROMPT TOKENS",
    "COMPLETION TOKENS",
    "MEAN LATENCY MS",
)


def verify_chain(found: AuditLines, hmac_key: bytes | None) -> tuple[bool, str]:
    """(ok, what to print) for the hash chain of the records in a container log."""
    if not found.records:
        return True, "audit chain: no records"
    first = found.records[0].get("seq")
    if first != 0 and found.records[0].get("kind") != "link":
        return True, (
            f"audit chain: not verified: the log starts at record #{first} (its earlier "
            "lines are gone, e.g. rotated away by the kubelet)"
        )
    from clawdbot_sidecar.accounting import audit  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "audit.log"
        path.write_text("".join(line + "\n" for line in found.lines), encoding="utf-8")
        result = audit.verify(path, hmac_key=hmac_key)
    if result.ok:
        return True, f"audit chain: ok: {result.records} records, last hash {result.last_hash}"
    where = ""
    if result.line is not None:
        where = f"log line {found.numbers[result.line - 1]}: "
    return False, f"audit chain: BROKEN: {where}{result.problem}: {result.detail}"


async def decisions(
    api: Api | None,
    namespace: str,
    pod: str,
    *,
    container: str = SIDECAR_CONTAINER,
    previous: bool = False,
    log_text: str | None = None,
    hmac_key: bytes | None = None,
    out: TextIO | None = None,
) -> int:
    """Summarise the routing decisions in a sidecar's log and verify their hash chain."""
    out = out or sys.stdout
    if log_text is None:
        assert api is not None, "a log or an API to read it from"
        log_text = await _called(api.pod_log(namespace, pod, container, previous))
    found = audit_lines(log_text)
    groups = summarise(found.records)
    if groups:
        print(format_table(DECISION_HEADERS, decision_rows(groups)), file=out)
        by_target = Counter[str]()
        redacted = Counter[str]()
        for record in found.records:
            if record.get("kind") == "decision":
                by_target[str(record.get("target", ""))] += 1
                for entity, n in (record.get("redacted") or {}).items():
                    redacted[str(entity)] += int(n)
        total = sum(by_target.values())
        split = ", ".join(f"{t} {n}" for t, n in by_target.most_common())
        print(f"\n{total} decisions ({split})", file=out)
        if redacted:
            values = ", ".join(f"{e} {n}" for e, n in sorted(redacted.items()))
            print(f"redacted values: {values}", file=out)
    else:
        print(f"No decisions in the log of {namespace}/{pod} container {container}.", file=out)
    ok, message = verify_chain(found, hmac_key)
    print(message, file=out)
    return 0 if ok else 1


# --- command line ------------------------------------------------------------------------


def _connection_args(p: argparse.ArgumentParser, *, all_namespaces: bool = False) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    if all_namespaces:
        group = p.add_mutually_exclusive_group()
        group.add_argument("-n", "--namespace", help="namespace (default: the context's)")
        group.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    else:
        p.add_argument("-n", "--namespace", help="namespace (default: the context's)")


ApiFactory = Callable[[str, "str | None"], Awaitable[Api]]


async def _connect(kubeconfig: str, context: str | None) -> Api:
    return await connect_kube(kubeconfig, context)


def run(args: argparse.Namespace, connect: ApiFactory = _connect) -> int:
    """Run a cluster subcommand; ClusterErrors become ``error: ...`` and exit 1."""
    kubeconfig = kubeconfig_path(args.kubeconfig)
    namespace = args.namespace or context_namespace(kubeconfig, args.context)

    text: str | None = None
    if args.command == "decisions" and args.file:
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        except OSError as exc:
            print(f"error: {args.file}: cannot read: {exc.strerror}", file=sys.stderr)
            return 1

    async def go() -> int:
        if text is not None:
            return await decisions(
                None, namespace, args.pod, container=args.container, log_text=text,
                hmac_key=_hmac_key(args),
            )  # fmt: skip
        api = await connect(kubeconfig, args.context)
        try:
            if args.command == "status":
                return await status(api, None if args.all_namespaces else namespace, wide=args.wide)
            if args.command == "rollback":
                return await rollback(
                    api, namespace, args.name, args.to_revision, wait_s=args.timeout
                )
            return await decisions(
                api, namespace, args.pod, container=args.container, previous=args.previous,
                hmac_key=_hmac_key(args),
            )  # fmt: skip
        finally:
            close = getattr(api, "close", None)
            if close is not None:
                await close()

    try:
        return asyncio.run(go())
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _hmac_key(args: argparse.Namespace) -> bytes | None:
    return Path(args.hmac_key_file).read_bytes().strip() if args.hmac_key_file else None


PLUGIN_NOTE: Final = (
    "as a kubectl plugin: put cli/kubectl-clawdbot on PATH, or "
    "'ln -s .venv/bin/clawdbot ~/.local/bin/kubectl-clawdbot', then 'kubectl clawdbot ...'"
)


def add_parsers(sub: Any) -> None:
    """Register ``status``, ``rollback`` and ``decisions`` on the ``clawdbot`` subparsers."""
    p = sub.add_parser(
        "status",
        help="ModelDeployments and RoutingPolicies at a glance",
        epilog=PLUGIN_NOTE,
    )
    _connection_args(p, all_namespaces=True)
    p.add_argument("--wide", action="store_true", help="show condition messages whole")
    p.set_defaults(func=run)

    p = sub.add_parser(
        "rollback",
        help="roll a ModelDeployment back to a revision (spec.rollbackTo) and wait for it",
        epilog=PLUGIN_NOTE,
    )
    p.add_argument("name", help="the ModelDeployment")
    p.add_argument(
        "--to-revision", type=int, required=True, help="revision number (status.revisions)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_ROLLBACK_TIMEOUT_S,
        help=f"seconds to wait for the operator (default {DEFAULT_ROLLBACK_TIMEOUT_S:g})",
    )
    _connection_args(p)
    p.set_defaults(func=run)

    p = sub.add_parser(
        "decisions",
        help="summarise a pod's routing decisions from its sidecar's audit log, and verify it",
        epilog=PLUGIN_NOTE,
    )
    p.add_argument("pod", help="a pod with the clawdbot sidecar")
    p.add_argument("-c", "--container", default=SIDECAR_CONTAINER, help="the sidecar container")
    p.add_argument("--previous", action="store_true", help="the log of the previous restart")
    p.add_argument("--file", help="read a saved log ('kubectl logs ...' output; '-' for stdin)")
    p.add_argument("--hmac-key-file", help="file holding the policy's audit HMAC key")
    _connection_args(p)
    p.set_defaults(func=run)
