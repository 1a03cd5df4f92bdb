"""The external.metrics.k8s.io API served from load reports (driven without TLS)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from clawdbot_operator.loadreports import LoadReport, LoadReportStore
from clawdbot_operator.metrics_api import make_app, parse_selector, self_signed

BASE = "/apis/external.metrics.k8s.io/v1beta1"


@pytest.fixture
def store() -> LoadReportStore:
    s = LoadReportStore()
    now = datetime.now(UTC)
    s.add(LoadReport("ai", "llama", "pod-a", now, inflight_requests=6, queue_depth=1))
    s.add(LoadReport("ai", "llama", "pod-b", now, inflight_requests=3.5))
    s.add(LoadReport("ai", "phi", "pod-c", now, inflight_requests=1))
    s.add(LoadReport("other", "llama", "pod-d", now, inflight_requests=100))
    return s


class Anyone:
    """Serves every request: these tests are about the answers (who may ask is
    test_metrics_auth.py's)."""

    async def check(self, request: web.Request) -> web.Response | None:
        return None


@pytest.fixture
async def client(store: LoadReportStore) -> AsyncIterator[TestClient[object, object]]:
    app = make_app(store, auth=Anyone(), accept_reports=True)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_discovery(client: TestClient[object, object]) -> None:
    groups = await (await client.get("/apis")).json()
    assert groups["groups"][0]["name"] == "external.metrics.k8s.io"
    resources = await (await client.get(BASE)).json()
    assert resources["kind"] == "APIResourceList"
    assert resources["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    assert {r["name"] for r in resources["resources"]} >= {"clawdbot_inflight_requests"}
    assert (await client.get("/healthz")).status == 200


async def test_values_summed_per_model_deployment_and_filtered(
    client: TestClient[object, object],
) -> None:
    selector = "clawdbot.io/model-deployment=llama,clawdbot.io/namespace=ai"
    resp = await client.get(
        f"{BASE}/namespaces/ai/clawdbot_inflight_requests", params={"labelSelector": selector}
    )
    body = await resp.json()
    assert resp.status == 200 and body["kind"] == "ExternalMetricValueList"
    assert [
        (i["metricLabels"]["clawdbot.io/model-deployment"], i["value"]) for i in body["items"]
    ] == [("llama", "9500m")]
    everything = await (await client.get(f"{BASE}/namespaces/ai/clawdbot_inflight_requests")).json()
    assert len(everything["items"]) == 2
    queue = await (await client.get(f"{BASE}/namespaces/ai/clawdbot_queue_depth")).json()
    assert [i["value"] for i in queue["items"]] == ["1", "0"]


async def test_unknown_metric_and_bad_selector(client: TestClient[object, object]) -> None:
    assert (await client.get(f"{BASE}/namespaces/ai/cpu_usage")).status == 404
    bad = await client.get(
        f"{BASE}/namespaces/ai/clawdbot_queue_depth", params={"labelSelector": "a in b"}
    )
    assert bad.status == 400


async def test_post_reports(client: TestClient[object, object], store: LoadReportStore) -> None:
    resp = await client.post(
        "/loadreports",
        json={"namespace": "ns2", "modelDeployment": "m", "source": "s", "inflightRequests": 4},
    )
    assert resp.status == 202
    assert [v.value for v in store.metric_values("ns2", "clawdbot_inflight_requests")] == [4.0]
    assert (await client.post("/loadreports", json={"namespace": "x"})).status == 400
    assert (await client.post("/loadreports", data=b"{")).status == 400


def test_latest_report_per_source_replaces_its_gauges() -> None:
    s = LoadReportStore()
    s.add(
        LoadReport("ai", "m", "a", datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC), inflight_requests=9)
    )
    s.add(
        LoadReport("ai", "m", "a", datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC), inflight_requests=2)
    )
    now = datetime(2026, 1, 1, 0, 0, 20, tzinfo=UTC)  # within the gauge TTL of the last
    assert [v.value for v in s.metric_values("ai", "clawdbot_inflight_requests", now)] == [2.0]


def test_selector_parser() -> None:
    reqs = parse_selector("a=1,b!=2,c in (x, y),d notin (z),e,!f")
    labels = {"a": "1", "b": "3", "c": "y", "d": "q", "e": ""}
    assert all(r.matches(labels) for r in reqs)
    assert not all(r.matches({**labels, "f": "1"}) for r in reqs)
    assert parse_selector("") == []


def test_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, ["localhost", "127.0.0.1"])
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert key.stat().st_mode & 0o077 == 0


async def test_posted_reports_are_stamped_when_received(
    client: TestClient[object, object], store: LoadReportStore
) -> None:
    """A report dated next year would hold its load up long after its sender stopped."""
    before = datetime.now(UTC)
    resp = await client.post(
        "/loadreports",
        json={"namespace": "ns3", "modelDeployment": "m", "inflightRequests": 50,
              "timestamp": "2099-01-01T00:00:00Z"},
    )  # fmt: skip
    assert resp.status == 202
    (value,) = store.metric_values("ns3", "clawdbot_inflight_requests")
    assert before <= value.timestamp <= datetime.now(UTC)
    later = datetime.now(UTC) + store.gauge_ttl + timedelta(seconds=1)
    assert store.metric_values("ns3", "clawdbot_inflight_requests", later) == []
