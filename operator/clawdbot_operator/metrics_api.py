"""The ``external.metrics.k8s.io/v1beta1`` API the HPA reads, served from the load reports.

The API server reaches it through an APIService (the chart registers one); it speaks
HTTPS. Routes:

* discovery: ``/apis``, ``/apis/external.metrics.k8s.io``, ``/apis/external.metrics.k8s.io/v1beta1``
* values: ``/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector=...``
  -> an ExternalMetricValueList with one item per matching ModelDeployment (the HPA sums
  them and divides by the replica count for an AverageValue target)
* ``POST /loadreports`` (only when enabled): a JSON load report or a list of them, stamped
  with the time they arrive (the sidecars report over the discovery stream instead)
* ``/healthz``, ``/livez``, ``/readyz``

TLS: the operator's one serving certificate (``tls.ServingCertificates``: the same
CA as the webhook's, named for the metrics Service too, and published into the APIService's
caBundle), or the certificate files given on the command line.

Who may ask: the aggregator, for a user allowed to get the metric in the namespace (see
``metrics_auth``); every request passes :class:`RequestAuth` first.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web

from clawdbot_operator import tls
from clawdbot_operator.loadreports import GAUGES, LoadReport, LoadReportStore
from clawdbot_operator.metrics_auth import MetricsAuth

GROUP: Final = "external.metrics.k8s.io"
VERSION: Final = "v1beta1"
GROUP_VERSION: Final = f"{GROUP}/{VERSION}"
STORE_KEY: Final = web.AppKey("store", LoadReportStore)


class RequestAuth(Protocol):
    """Decides whether a request is served (``metrics_auth.MetricsAuth``)."""

    async def check(self, request: web.Request) -> web.Response | None:
        """None to serve ``request``; else the refusal to answer with."""
        ...


class SelectorError(ValueError):
    """A label selector this server can't parse."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return value == self.values[0]
        if self.op == "!=":
            return value != self.values[0]
        if self.op == "in":
            return value in self.values
        if self.op == "notin":
            return value not in self.values
        if self.op == "exists":
            return present
        return not present


_SET = re.compile(r"^\s*([^\s!=,()]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ = re.compile(r"^\s*([^\s!=,()]+)\s*(==|=|!=)\s*([^\s,()]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([^\s!=,()]+)\s*$")


def parse_selector(text: str) -> list[Requirement]:
    """Parse a Kubernetes label selector string (equality- and set-based)."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    out: list[Requirement] = []
    for part in parts:
        if not part.strip():
            continue
        if m := _SET.match(part):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            out.append(Requirement(m.group(1), m.group(2), values))
        elif m := _EQ.match(part):
            out.append(Requirement(m.group(1), "!=" if m.group(2) == "!=" else "=", (m.group(3),)))
        elif m := _EXISTS.match(part):
            out.append(Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
        else:
            raise SelectorError(f"can't parse label selector term {part.strip()!r}")
    return out


def _time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _quantity(value: float) -> str:
    # Milli-units keep fractional averages (0.25 in-flight requests) exact enough.
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        },
        status=code,
    )


async def _api_groups(_: web.Request) -> web.Response:
    return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group()]})


def _group() -> dict[str, Any]:
    version = {"groupVersion": GROUP_VERSION, "version": VERSION}
    return {"name": GROUP, "versions": [version], "preferredVersion": version}


async def _api_group(_: web.Request) -> web.Response:
    return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **_group()})


async def _resources(_: web.Request) -> web.Response:
    resources = [
        {
            "name": metric,
            "singularName": "",
            "namespaced": True,
            "kind": "ExternalMetricValueList",
            "verbs": ["get"],
        }
        for metric in GAUGES
    ]
    return web.json_response(
        {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": GROUP_VERSION,
            "resources": resources,
        }
    )


async def _values(request: web.Request) -> web.Response:
    namespace, metric = request.match_info["namespace"], request.match_info["metric"]
    if metric not in GAUGES:
        return _status(404, "NotFound", f"metric {metric!r} is not served by clawdbot")
    try:
        selector = parse_selector(request.query.get("labelSelector", ""))
    except SelectorError as exc:
        return _status(400, "BadRequest", str(exc))
    store = request.app[STORE_KEY]
    items = [
        {
            "metricName": metric,
            "metricLabels": v.labels,
            "timestamp": _time(v.timestamp),
            "value": _quantity(v.value),
        }
        for v in store.metric_values(namespace, metric)
        if all(req.matches(v.labels) for req in selector)
    ]
    return web.json_response(
        {
            "kind": "ExternalMetricValueList",
            "apiVersion": GROUP_VERSION,
            "metadata": {},
            "items": items,
        }
    )


def report_from_json(data: dict[str, Any], now: datetime) -> LoadReport:
    """A LoadReport from its JSON form (camelCase keys), stamped ``now``: the time it was
    received, whatever its own ``timestamp`` says (a report dated next year would keep its
    load counting long after its sender stopped)."""
    try:
        p95 = data.get("p95LatencyMs")
        revision = data.get("revision")
        return LoadReport(
            namespace=str(data["namespace"]),
            model_deployment=str(data["modelDeployment"]),
            source=str(data.get("source", "unknown")),
            timestamp=now,
            revision=int(revision) if revision is not None else None,
            inflight_requests=float(data.get("inflightRequests", 0)),
            queue_depth=float(data.get("queueDepth", 0)),
            requests_per_second=float(data.get("requestsPerSecond", 0)),
            requests=int(data.get("requests", 0)),
            errors=int(data.get("errors", 0)),
            p95_latency_ms=float(p95) if p95 is not None else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"invalid load report: {exc!r}") from exc


async def _post_reports(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _status(400, "BadRequest", "the body must be JSON")
    docs = body if isinstance(body, list) else [body]
    now = datetime.now(UTC)
    try:
        reports = [report_from_json(d, now) for d in docs]
    except ValueError as exc:
        return _status(400, "BadRequest", str(exc))
    for r in reports:
        request.app[STORE_KEY].add(r)
    return web.json_response({"accepted": len(reports)}, status=202)


async def _ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(
    store: LoadReportStore, *, auth: RequestAuth, accept_reports: bool = False
) -> web.Application:
    """The aiohttp application; every request passes ``auth`` first."""

    @web.middleware
    async def authorized(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        refusal = await auth.check(request)
        return refusal if refusal is not None else await handler(request)

    app = web.Application(middlewares=[authorized])
    app[STORE_KEY] = store
    base = f"/apis/{GROUP}/{VERSION}"
    app.router.add_get("/apis", _api_groups)
    app.router.add_get(f"/apis/{GROUP}", _api_group)
    app.router.add_get(base, _resources)
    app.router.add_get(base + "/namespaces/{namespace}/{metric}", _values)
    for path in ("/healthz", "/livez", "/readyz"):
        app.router.add_get(path, _ok)
    if accept_reports:
        app.router.add_post("/loadreports", _post_reports)
    return app


def self_signed(directory: Path, hosts: Sequence[str]) -> tuple[Path, Path]:
    """A self-signed certificate for ``hosts``, its own CA (``tls.self_signed``):
    what a test hands the metrics server and its APIService's caBundle."""
    return tls.self_signed(directory, hosts)


async def serve(
    store: LoadReportStore,
    *,
    auth: MetricsAuth,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    accept_reports: bool = False,
) -> web.AppRunner:
    """Start the HTTPS server with ``ssl_context`` (the operator's serving certificate, renewed
    in place; a context of the metrics API's own, as it asks clients for certificates) or,
    when given, ``cert_file``/``key_file``; the caller cleans up the runner."""
    if cert_file and key_file:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
    elif ssl_context is not None:
        context = ssl_context
    else:
        raise ValueError("the metrics API needs a serving certificate: ssl_context or files")
    auth.bind(context)
    app = make_app(store, auth=auth, accept_reports=accept_reports)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=context).start()
    return runner
