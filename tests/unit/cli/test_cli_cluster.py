"""``clawdbot status``, ``rollback`` and ``decisions`` against a fake API server."""

from __future__ import annotations

import argparse
import copy
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clawdbot_cli import cluster
from clawdbot_cli.main import build_parser
from clawdbot_cli.main import main as clawdbot
from clawdbot_operator.kube import KubeError
from clawdbot_sidecar.accounting.audit import AuditLog, AuditRecord

Obj = dict[str, Any]


def md(
    name: str,
    namespace: str = "ai",
    *,
    replicas: int = 2,
    generation: int = 1,
    rollback_to: int | None = None,
    **status: Any,
) -> Obj:
    spec: Obj = {"model": {"name": "m", "uri": "pvc://x/m"}, "replicas": replicas}
    if rollback_to is not None:
        spec["rollbackTo"] = rollback_to
    return {
        "metadata": {"name": name, "namespace": namespace, "generation": generation},
        "spec": spec,
        "status": status,
    }


def cond(kind: str, status: str, when: str, message: str = "", reason: str = "R") -> Obj:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": when,
    }


def revisions(*phases: str) -> list[Obj]:
    return [
        {"revision": i, "hash": f"h{i}", "modelVersion": str(i), "phase": p,
         "createdAt": f"2026-01-01T00:0{i}:00Z"}
        for i, p in enumerate(phases, 1)
    ]  # fmt: skip


class FakeApi:
    """Objects by (kind, namespace, name), with the operator client's interface; ``steps``
    play the operator."""

    def __init__(self, *objects: tuple[str, Obj]) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        for kind, obj in objects:
            meta = obj["metadata"]
            self.objects[(kind, meta["namespace"], meta["name"])] = obj
        self.patches: list[Obj] = []
        self.gets = 0
        self.steps: list[Callable[[Obj], None]] = []
        self.logs: dict[tuple[str, str, str], str] = {}

    async def list(self, api_version: str, kind: str, namespace: str | None,
                   label_selector: str = "") -> list[Obj]:  # fmt: skip
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in self.objects.items()
            if k == kind and namespace in (None, ns)
        ]

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        key = (kind, namespace, name)
        if key not in self.objects:
            return None
        self.gets += 1
        # The operator moves one step per read once the request is in.
        if self.patches and self.steps:
            self.steps.pop(0)(self.objects[key])
        return copy.deepcopy(self.objects[key])

    async def patch_model_deployment(
        self, namespace: str, name: str, patch: Obj, *, status: bool = False
    ) -> Obj:
        self.patches.append(patch)
        obj = self.objects[("ModelDeployment", namespace, name)]
        obj["spec"].update(patch["spec"])
        obj["metadata"]["generation"] += 1
        return copy.deepcopy(obj)

    async def pod_log(
        self, namespace: str, pod: str, container: str, previous: bool = False
    ) -> str:
        return self.logs[(namespace, pod, container)]


# --- tables ------------------------------------------------------------------------------


def test_table_is_kubectl_like() -> None:
    text = cluster.format_table(["NAME", "READY"], [["a-long-name", "1/2"], ["b", "10/10"]])
    assert text.splitlines() == [
        "NAME          READY",
        "a-long-name   1/2",
        "b             10/10",
    ]


def test_last_condition_message_is_the_latest_transition() -> None:
    obj = md(
        "x",
        conditions=[
            cond("Available", "True", "2026-01-01T00:00:05Z", "older"),
            cond("Progressing", "True", "2026-01-01T00:00:09Z", "newest"),
            cond("Ready", "True", "2026-01-01T00:00:07Z", "middle"),
        ],
    )
    view = cluster.ModelDeploymentView.of(obj)
    assert cluster.last_condition_message(view.status.conditions) == "newest"
    assert (
        cluster.last_condition_message(cluster.ModelDeploymentView.of(md("y")).status.conditions)
        == ""
    )


async def test_status_tables_for_one_namespace() -> None:
    long = "Revision 2 failed: CrashLoopBackOff in pod llama-abc; rolled back to revision 1 " * 2
    api = FakeApi(
        ("ModelDeployment", md(
            "llama", phase="Available", readyReplicas=2, currentRevision=2, stableRevision=2,
            conditions=[cond("Ready", "True", "2026-01-01T00:00:00Z", "Revision 2 is rolled out.")],
        )),
        ("ModelDeployment", md(
            "bad", replicas=1, phase="Degraded", currentRevision=1,
            conditions=[cond("Degraded", "True", "2026-01-01T00:00:00Z", long)],
        )),
        ("ModelDeployment", md("new", replicas=3)),
        ("ModelDeployment", md("elsewhere", namespace="other")),
        ("RoutingPolicy", {
            "metadata": {"name": "chat", "namespace": "ai"},
            "status": {"matchedPods": 3, "readyEndpoints": 2,
                       "conditions": [cond("Ready", "True", "2026-01-01T00:00:00Z", "ok")]},
        }),
    )  # fmt: skip
    out = io.StringIO()
    assert await cluster.status(api, "ai", out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "ModelDeployments:"
    assert lines[1].split() == ["NAME", "PHASE", "READY", "CURRENT", "STABLE", "MESSAGE"]
    rows = [line.split(None, 5) for line in lines[2:5]]
    assert rows[0][:5] == ["bad", "Degraded", "0/1", "1", "<none>"]
    assert rows[0][5].endswith("...") and len(rows[0][5]) == cluster.MESSAGE_WIDTH
    assert rows[1] == ["llama", "Available", "2/2", "2", "2", "Revision 2 is rolled out."]
    assert rows[2] == ["new", "Pending", "0/3", "<none>", "<none>"]
    assert "elsewhere" not in out.getvalue()
    assert lines[6] == "RoutingPolicies:"
    assert lines[7].split() == ["NAME", "READY", "MATCHED", "PODS", "READY", "ENDPOINTS", "MESSAGE"]
    assert lines[8].split() == ["chat", "True", "3", "2", "ok"]

    wide = io.StringIO()
    await cluster.status(api, "ai", wide=True, out=wide)
    assert long.strip() in wide.getvalue()


async def test_status_all_namespaces_and_empty() -> None:
    api = FakeApi(("ModelDeployment", md("b", namespace="z")), ("ModelDeployment", md("a")))
    out = io.StringIO()
    await cluster.status(api, None, out=out)
    lines = out.getvalue().splitlines()
    assert lines[1].split()[:2] == ["NAMESPACE", "NAME"]
    assert [line.split()[:2] for line in lines[2:4]] == [["ai", "a"], ["z", "b"]]
    assert "No RoutingPolicies found in any namespace." in out.getvalue()
    empty = io.StringIO()
    await cluster.status(FakeApi(), "x", out=empty)
    assert empty.getvalue().splitlines() == [
        "No ModelDeployments found in namespace x.",
        "",
        "No RoutingPolicies found in namespace x.",
    ]


# --- rollback ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def _rolled(
    target: int, phase: str, ready: int, updated: int, pods: int = 2
) -> Callable[[Obj], None]:
    def step(obj: Obj) -> None:
        obj["spec"].pop("rollbackTo", None)
        obj["status"].update(
            currentRevision=target,
            phase=phase,
            replicas=pods,
            readyReplicas=ready,
            updatedReplicas=updated,
            observedGeneration=obj["metadata"]["generation"],
        )

    return step


async def _rollback(api: FakeApi, revision: int, **kw: Any) -> tuple[int, str, str]:
    out, err, clock = io.StringIO(), io.StringIO(), Clock()
    code = await cluster.rollback(
        api, "ai", "llama", revision, out=out, err=err, clock=clock, sleep=clock.sleep, **kw
    )
    return code, out.getvalue(), err.getvalue()


def _llama(**status: Any) -> FakeApi:
    base: Obj = {
        "phase": "Available", "currentRevision": 2, "stableRevision": 2, "readyReplicas": 2,
        "updatedReplicas": 2, "observedGeneration": 1,
        "revisions": revisions("Healthy", "Healthy"),
    }  # fmt: skip
    base.update(status)
    obj = md("llama", **base)
    obj["status"]["replicas"] = 2  # (md's replicas= is spec.replicas)
    return FakeApi(("ModelDeployment", obj))


async def test_rollback_sets_rollback_to_and_follows_the_operator() -> None:
    api = _llama()
    api.steps = [
        lambda o: None,  # not seen yet
        _rolled(1, "Progressing", 2, 1, pods=3),
        _rolled(1, "Progressing", 2, 1, pods=3),  # unchanged: no new line
        _rolled(1, "Available", 3, 2, pods=3),  # a surge pod of revision 2 is still there
        _rolled(1, "Available", 2, 2),
    ]
    code, out, err = await _rollback(api, 1)
    assert (code, err) == (0, "")
    assert api.patches == [{"spec": {"rollbackTo": 1}}]
    lines = out.splitlines()
    assert lines[0] == "modeldeployment ai/llama: spec.rollbackTo set to 1"
    assert lines[1] == (
        "rollback to revision 1: requested; phase Available, current revision 2, "
        "2/2 ready, 2/2 updated, 2 pods"
    )
    assert lines[2].startswith("rollback to revision 1: taken by the operator; phase Progressing")
    assert lines[3].endswith("phase Available, current revision 1, 3/2 ready, 2/2 updated, 3 pods")
    assert lines[4].endswith("phase Available, current revision 1, 2/2 ready, 2/2 updated, 2 pods")
    assert lines[5] == "modeldeployment ai/llama rolled back to revision 1 (2/2 ready)"
    assert len(lines) == 6


async def test_rollback_refuses_a_revision_not_in_history() -> None:
    api = _llama()
    code, _, err = await _rollback(api, 7)
    assert code == 1 and api.patches == []
    assert "has no revision 7 in status.revisions (kept: 1, 2)" in err


async def test_rollback_to_the_current_revision_is_a_no_op() -> None:
    api = _llama()
    code, out, _ = await _rollback(api, 2)
    assert code == 0 and api.patches == []
    assert "already runs revision 2" in out


async def test_rollback_reports_the_operators_refusal() -> None:
    api = _llama()

    def refuse(obj: Obj) -> None:
        obj["status"]["conditions"] = [
            cond("Ready", "False", "2026-01-01T00:00:00Z",
                 "spec.rollbackTo: revision 1 is not in the history (kept: 2)", "InvalidSpec")
        ]  # fmt: skip

    api.steps = [refuse]
    code, _, err = await _rollback(api, 1)
    assert code == 1
    assert "the operator refused the rollback: spec.rollbackTo: revision 1 is not" in err


async def test_rollback_times_out() -> None:
    api = _llama()
    api.steps = [lambda o: None] * 100
    code, _, err = await _rollback(api, 1, wait_s=5, poll=1)
    assert code == 1
    assert "timed out after 5s waiting for the rollback to revision 1" in err
    assert api.gets <= 8  # bounded: one read per poll


async def test_rollback_reports_a_failed_target() -> None:
    api = _llama()

    def fail(obj: Obj) -> None:
        _rolled(1, "Failed", 0, 0)(obj)
        obj["status"]["revisions"][0]["phase"] = "Failed"

    api.steps = [fail]
    code, _, err = await _rollback(api, 1)
    assert code == 1 and "revision 1 failed" in err


# --- decisions ---------------------------------------------------------------------------


def _sidecar_log(tmp_path: Path, key: bytes | None = None) -> str:
    """A sidecar's stdout: its own log lines mixed with the audit records it wrote."""
    stream = io.StringIO()
    log = AuditLog.to_stream(stream, hmac_key=key, clock=lambda: 1_700_000_000.0)
    records = [
        AuditRecord("r1", "local", "short", "tiny-chat", 5, 8, 12.0),
        AuditRecord("r2", "local", "short", "tiny-chat", 7, 4, 8.0, cache_hit=True),
        AuditRecord("r3", "cloud", "long", "gpt-4o-mini", 900, 30, 420.0, {"EMAIL": 2}),
        AuditRecord("r4", "local", "adaptive", "tiny-chat", 3, 3, 5.0),
    ]
    for record in records:
        log.append(record)
    log.close()
    audit = stream.getvalue().splitlines()
    noise = json.dumps({"level": "info", "msg": "sidecar ready"})
    return "\n".join([noise, audit[0], "plain text line", *audit[1:], noise]) + "\n"


async def test_decisions_summarise_and_verify(tmp_path: Path) -> None:
    api = FakeApi()
    api.logs[("ai", "chat-app", "clawdbot-sidecar")] = _sidecar_log(tmp_path)
    out = io.StringIO()
    assert await cluster.decisions(api, "ai", "chat-app", out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "TARGET", "REASON", "DECISIONS", "CACHE", "HITS", "PROMPT", "TOKENS", "COMPLETION",
        "TOKENS", "MEAN", "LATENCY", "MS",
    ]  # fmt: skip
    assert lines[1].split() == ["local", "short", "2", "1", "12", "12", "10.0"]
    assert lines[2].split() == ["cloud", "long", "1", "0", "900", "30", "420.0"]
    assert lines[3].split() == ["local", "adaptive", "1", "0", "3", "3", "5.0"]
    assert "4 decisions (local 3, cloud 1)" in lines
    assert "redacted values: EMAIL 2" in lines
    assert lines[-1].startswith("audit chain: ok: 4 records, last hash ")


async def test_decisions_name_the_edited_log_line(tmp_path: Path) -> None:
    text = _sidecar_log(tmp_path).replace('"target":"cloud"', '"target":"local"')
    out = io.StringIO()
    assert await cluster.decisions(None, "ai", "p", log_text=text, out=out) == 1
    assert out.getvalue().splitlines()[-1] == (
        "audit chain: BROKEN: log line 5: edited: its hash does not match its content"
    )


async def test_decisions_with_hmac_key_and_rotated_head(tmp_path: Path) -> None:
    text = _sidecar_log(tmp_path, key=b"k3y")
    out = io.StringIO()
    assert await cluster.decisions(None, "ai", "p", log_text=text, hmac_key=b"k3y", out=out) == 0
    assert "audit chain: ok: 4 records" in out.getvalue()
    wrong = io.StringIO()
    assert await cluster.decisions(None, "ai", "p", log_text=text, hmac_key=b"no", out=wrong) == 1
    # The kubelet rotated the first lines away: said so, not called tampering.
    head_cut = "\n".join(line for line in text.splitlines() if '"seq":0' not in line)
    cut = io.StringIO()
    assert await cluster.decisions(None, "ai", "p", log_text=head_cut, out=cut) == 0
    assert "not verified: the log starts at record #1" in cut.getvalue()


async def test_decisions_without_records() -> None:
    out = io.StringIO()
    assert await cluster.decisions(None, "ai", "p", log_text="hello\n", out=out) == 0
    assert out.getvalue().splitlines() == [
        "No decisions in the log of ai/p container clawdbot-sidecar.",
        "audit chain: no records",
    ]


# --- command line ------------------------------------------------------------------------


def test_parsers() -> None:
    parser = build_parser()
    args = parser.parse_args(["status", "-A", "--kubeconfig", "kc"])
    assert (args.all_namespaces, args.namespace, args.kubeconfig) == (True, None, "kc")
    with pytest.raises(SystemExit):
        parser.parse_args(["status", "-A", "-n", "x"])
    args = parser.parse_args(["rollback", "llama", "--to-revision", "3", "-n", "ai"])
    assert (args.name, args.to_revision, args.namespace, args.timeout) == ("llama", 3, "ai", 300)
    args = parser.parse_args(["decisions", "chat-app", "--previous"])
    assert (args.pod, args.container, args.previous) == ("chat-app", "clawdbot-sidecar", True)


def test_kubeconfig_and_namespace_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: a\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts:\n"
        "- {name: a, context: {cluster: c, user: u, namespace: team-a}}\n"
        "- {name: b, context: {cluster: c, user: u}}\n"
    )
    monkeypatch.setenv("KUBECONFIG", f"{config}:{tmp_path / 'other'}")
    assert cluster.kubeconfig_path(None) == str(config)
    assert cluster.kubeconfig_path("x") == "x"
    assert cluster.context_namespace(str(config), None) == "team-a"
    assert cluster.context_namespace(str(config), "b") == "default"
    assert cluster.context_namespace(str(tmp_path / "missing"), None) == "default"


def test_run_wires_the_fake_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    api = FakeApi(("ModelDeployment", md("llama", namespace="ns1")))
    seen: list[tuple[str, str | None]] = []

    async def connect(kubeconfig: str, context: str | None) -> cluster.Api:
        seen.append((kubeconfig, context))
        return api

    args = build_parser().parse_args(
        ["status", "-n", "ns1", "--kubeconfig", "kc", "--context", "ctx"]
    )
    assert cluster.run(args, connect) == 0
    assert seen == [("kc", "ctx")]
    assert "llama" in capsys.readouterr().out

    args = build_parser().parse_args(["rollback", "nope", "--to-revision", "1", "-n", "ns1"])
    assert cluster.run(args, connect) == 1
    assert 'error: modeldeployments.clawdbot.io "nope" not found in namespace ns1' in (
        capsys.readouterr().err
    )


def test_decisions_from_a_saved_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "sidecar.log"
    saved.write_text(_sidecar_log(tmp_path))
    code = clawdbot(["decisions", "chat-app", "--file", str(saved), "--kubeconfig", "absent"])
    assert code == 0
    assert "audit chain: ok: 4 records" in capsys.readouterr().out
    assert clawdbot(["decisions", "p", "--file", str(tmp_path / "none"), "--kubeconfig", "x"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_commands_are_registered() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"status", "rollback", "decisions"} <= set(sub.choices)


def test_an_api_refusal_is_reported_in_the_api_servers_words(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The operator's client raises KubeError; the CLI prints the Status message."""

    class Forbidden(FakeApi):
        async def list(self, api_version: str, kind: str, namespace: str | None,
                       label_selector: str = "") -> list[Obj]:  # fmt: skip
            raise KubeError(
                403,
                "GET /apis/...: {...}",
                'modeldeployments.clawdbot.io is forbidden: User "dev" cannot list',
            )

    async def connect(kubeconfig: str, context: str | None) -> cluster.Api:
        return Forbidden()

    args = build_parser().parse_args(["status", "-n", "ns1", "--kubeconfig", "kc"])
    assert cluster.run(args, connect) == 1
    assert capsys.readouterr().err == (
        'error: modeldeployments.clawdbot.io is forbidden: User "dev" cannot list (HTTP 403)\n'
    )
