"""The cluster side of the ``clawdbot`` command: ``status``, ``rollback`` and ``decisions``.

They talk to the API server with the user's kubeconfig (``--kubeconfig``, else
``$KUBECONFIG``, else ``~/.kube/config``; ``--context`` picks a context; the namespace is
``-n``, else the context's, else ``default``), through kubernetes_asyncio, so no ``kubectl``
is needed.

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
from typing import Any, Final, Protocol, TextIO

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from clawdbot_api.v1alpha1 import GROUP, VERSION
from clawdbot_sidecar.accounting import audit

Obj = dict[str, Any]

MODEL_DEPLOYMENTS: Final = "modeldeployments"
ROUTING_POLICIES: Final = "routingpolicies"
SIDECAR_CONTAINER: Final = "clawdbot-sidecar"
NONE: Final = "<none>"
MESSAGE_WIDTH: Final = 60
"""Condition messages are cut to this in tables (``--wide`` shows them whole)."""
REQUEST_TIMEOUT_S: Final = 30
DEFAULT_ROLLBACK_TIMEOUT_S: Final = 300.0
POLL_S: Final = 1.0


class ClusterError(Exception):
    """A request failed or the cluster said no; the message says which and why."""


class Api(Protocol):
    """The API server calls the subcommands make (a fake one in tests)."""

    async def list_objects(self, plural: str, namespace: str | None) -> list[Obj]:
        """clawdbot.io objects of one kind, in ``namespace`` or (None) every namespace."""
        ...

    async def get_object(self, plural: str, namespace: str, name: str) -> Obj:
        """One clawdbot.io object; ClusterError when it does not exist."""
        ...

    async def merge_patch(self, plural: str, namespace: str, name: str, patch: Obj) -> Obj:
        """JSON merge patch of a clawdbot.io object; returns the patched object."""
        ...

    async def pod_log(self, namespace: str, pod: str, container: str, previous: bool) -> str:
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
    try:
        contexts, active = k8s_config.list_kube_config_contexts(config_file)
    except Exception:  # a missing or odd kubeconfig: the connection reports it better
        return "default"
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else "default"


class KubeApi:
    """:class:`Api` over kubernetes_asyncio's ApiClient."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    async def connect(cls, kubeconfig: str, context: str | None) -> KubeApi:
        configuration = k8s.Configuration()
        try:
            await k8s_config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        except (OSError, k8s_config.ConfigException) as exc:
            raise ClusterError(f"cannot load kubeconfig {kubeconfig}: {exc}") from exc
        return cls(k8s.ApiClient(configuration))

    async def close(self) -> None:
        await self._client.close()

    async def _call(
        self, method: str, path: str, *, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        try:
            return await self._client.call_api(
                path,
                method,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                response_types_map={200: "object", 201: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except ApiException as exc:
            raise ClusterError(_api_message(exc.status, exc.reason, exc.body)) from exc
        except OSError as exc:  # aiohttp's connection errors are OSErrors
            raise ClusterError(f"cannot reach the API server: {exc}") from exc

    @staticmethod
    def _path(plural: str, namespace: str | None, name: str | None = None) -> str:
        path = f"/apis/{GROUP}/{VERSION}"
        if namespace is not None:
            path += f"/namespaces/{namespace}"
        path += f"/{plural}"
        return path + (f"/{name}" if name else "")

    async def list_objects(self, plural: str, namespace: str | None) -> list[Obj]:
        result = await self._call("GET", self._path(plural, namespace))
        items = result.get("items") if isinstance(result, dict) else None
        return list(items or [])

    async def get_object(self, plural: str, namespace: str, name: str) -> Obj:
        result = await self._call("GET", self._path(plural, namespace, name))
        return dict(result)

    async def merge_patch(self, plural: str, namespace: str, name: str, patch: Obj) -> Obj:
        path = self._path(plural, namespace, name)
        result = await self._call(
            "PATCH", path, body=patch, content_type="application/merge-patch+json"
        )
        return dict(result)

    async def pod_log(self, namespace: str, pod: str, container: str, previous: bool) -> str:
        try:
            text = await k8s.CoreV1Api(self._client).read_namespaced_pod_log(
                pod, namespace, container=container, previous=previous
            )
        except ApiException as exc:
            raise ClusterError(_api_message(exc.status, exc.reason, exc.body)) from exc
        except OSError as exc:
            raise ClusterError(f"cannot reach the API server: {exc}") from exc
        return str(text)


def _api_message(status: int | None, reason: str | None, body: Any) -> str:
    """The Status message of an API error, else its HTTP reason."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        message = json.loads(text).get("message") if text else None
    except (ValueError, AttributeError):
        message = None
    return f"{message or text or reason} (HTTP {status})"


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


def _status(obj: Obj) -> Obj:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def _conditions(obj: Obj) -> list[Obj]:
    return [c for c in _status(obj).get("conditions") or [] if isinstance(c, dict)]


def condition(obj: Obj, kind: str) -> Obj | None:
    """The condition of type ``kind``, if the status has one."""
    return next((c for c in _conditions(obj) if c.get("type") == kind), None)


def last_condition_message(obj: Obj) -> str:
    """The message of the condition that changed last (the later one on a tie)."""
    conditions = [c for c in _conditions(obj) if c.get("message")]
    if not conditions:
        return ""
    latest = max(
        enumerate(conditions), key=lambda ic: (str(ic[1].get("lastTransitionTime") or ""), ic[0])
    )
    return str(latest[1]["message"])


def _revision(value: Any) -> str:
    return str(value) if isinstance(value, int) else NONE


def desired_replicas(md: Obj) -> int:
    """spec.replicas (the HPA writes it through the scale subresource), default 1."""
    value = (md.get("spec") or {}).get("replicas", 1)
    return int(value) if isinstance(value, int) else 1


def model_deployment_rows(
    items: Iterable[Obj], *, all_namespaces: bool, wide: bool
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the ModelDeployment table, sorted by namespace and name."""
    headers = ["NAME", "PHASE", "READY", "CURRENT", "STABLE", "MESSAGE"]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    rows: list[list[str]] = []
    for md in sorted(items, key=_sort_key):
        st = _status(md)
        row = [
            str(md["metadata"]["name"]),
            str(st.get("phase") or "Pending"),
            f"{int(st.get('readyReplicas') or 0)}/{desired_replicas(md)}",
            _revision(st.get("currentRevision")),
            _revision(st.get("stableRevision")),
            _cut(last_condition_message(md), None if wide else MESSAGE_WIDTH),
        ]
        if all_namespaces:
            row.insert(0, str(md["metadata"].get("namespace", "")))
        rows.append(row)
    return headers, rows


def routing_policy_rows(
    items: Iterable[Obj], *, all_namespaces: bool, wide: bool
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the RoutingPolicy table, sorted by namespace and name."""
    headers = ["NAME", "READY", "MATCHED PODS", "READY ENDPOINTS", "MESSAGE"]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    rows: list[list[str]] = []
    for rp in sorted(items, key=_sort_key):
        st = _status(rp)
        ready = condition(rp, "Ready")
        row = [
            str(rp["metadata"]["name"]),
            str((ready or {}).get("status") or "Unknown"),
            str(int(st.get("matchedPods") or 0)),
            str(int(st.get("readyEndpoints") or 0)),
            _cut(last_condition_message(rp), None if wide else MESSAGE_WIDTH),
        ]
        if all_namespaces:
            row.insert(0, str(rp["metadata"].get("namespace", "")))
        rows.append(row)
    return headers, rows


def _sort_key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


async def status(
    api: Api, namespace: str | None, *, wide: bool = False, out: TextIO | None = None
) -> int:
    """Print the ModelDeployment and RoutingPolicy tables (``namespace`` None: all)."""
    out = out or sys.stdout
    everywhere = namespace is None
    where = "any namespace" if everywhere else f"namespace {namespace}"
    mds = await api.list_objects(MODEL_DEPLOYMENTS, namespace)
    rps = await api.list_objects(ROUTING_POLICIES, namespace)
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

    @classmethod
    def of(cls, md: Obj) -> RollbackView:
        st = _status(md)
        ready_cond = condition(md, "Ready") or {}
        invalid = (
            str(ready_cond.get("message") or "InvalidSpec")
            if ready_cond.get("status") == "False" and ready_cond.get("reason") == "InvalidSpec"
            else None
        )
        current = st.get("currentRevision")
        return cls(
            pending=(md.get("spec") or {}).get("rollbackTo") is not None,
            phase=str(st.get("phase") or "Pending"),
            current=current if isinstance(current, int) else None,
            replicas=int(st.get("replicas") or 0),
            ready=int(st.get("readyReplicas") or 0),
            updated=int(st.get("updatedReplicas") or 0),
            desired=desired_replicas(md),
            observed=st.get("observedGeneration") == md["metadata"].get("generation"),
            invalid=invalid,
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


def _revisions(md: Obj) -> list[Obj]:
    return [r for r in _status(md).get("revisions") or [] if isinstance(r, dict)]


def _revision_phase(md: Obj, revision: int) -> str | None:
    found = next((r for r in _revisions(md) if r.get("revision") == revision), None)
    return str(found.get("phase")) if found else None


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
    md = await api.get_object(MODEL_DEPLOYMENTS, namespace, name)
    kept = sorted(int(r["revision"]) for r in _revisions(md) if isinstance(r.get("revision"), int))
    if revision not in kept:
        listed = ", ".join(map(str, kept)) or "none"
        print(
            f"error: modeldeployment {namespace}/{name} has no revision {revision} in "
            f"status.revisions (kept: {listed})",
            file=err,
        )
        return 1
    view = RollbackView.of(md)
    if view.current == revision and not view.pending:
        print(f"modeldeployment {namespace}/{name} already runs revision {revision}", file=out)
        return 0
    await api.merge_patch(MODEL_DEPLOYMENTS, namespace, name, {"spec": {"rollbackTo": revision}})
    print(f"modeldeployment {namespace}/{name}: spec.rollbackTo set to {revision}", file=out)
    deadline = clock() + wait_s
    shown = ""
    while True:
        md = await api.get_object(MODEL_DEPLOYMENTS, namespace, name)
        view = RollbackView.of(md)
        line = view.line(revision)
        if line != shown:
            print(line, file=out, flush=True)
            shown = line
        if view.invalid is not None and view.pending:
            print(f"error: the operator refused the rollback: {view.invalid}", file=err)
            return 1
        if view.taken(revision) and _revision_phase(md, revision) == "Failed":
            print(f"error: revision {revision} failed: {last_condition_message(md)}", file=err)
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
        log_text = await api.pod_log(namespace, pod, container, previous)
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
    return await KubeApi.connect(kubeconfig, context)


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
