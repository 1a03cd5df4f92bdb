"""Sidecar injection: golden files, the admission endpoint over TLS, certificate rotation.

Golden cases: testdata/<case>.yaml holds the namespace, its labels and the admitted pod;
testdata/<case>.injected.yaml the outcome and the resulting pod. Regenerate after an
intended change with CLAWDBOT_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch  # type: ignore[import-untyped]
import pytest
import yaml
from aiohttp.test_utils import TestServer

from clawdbot_operator import tls as serving_tls
from clawdbot_operator.webhook.inject import (
    SidecarSettings,
    decide,
    inject,
    json_patch,
)
from clawdbot_operator.webhook.server import MUTATE_PATH, WebhookMetrics, build_app

TESTDATA = Path(__file__).parent / "testdata"
CASES = sorted(p.stem for p in TESTDATA.glob("*.yaml") if not p.stem.endswith(".injected"))
OPERATOR_NS = "clawdbot-system"
SETTINGS = SidecarSettings()


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    outcome = decide(case["pod"], case["namespace"], case["namespaceLabels"], OPERATOR_NS,
                     case.get("watchNamespaces"))  # fmt: skip
    pod = inject(case["pod"], SETTINGS) if outcome.value == "injected" else case["pod"]
    return {"outcome": outcome.value, "pod": pod}


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    case = yaml.safe_load((TESTDATA / f"{name}.yaml").read_text())
    got = run_case(case)
    golden = TESTDATA / f"{name}.injected.yaml"
    if os.environ.get("CLAWDBOT_UPDATE_GOLDEN") == "1":
        golden.write_text(yaml.safe_dump(got, sort_keys=False))
    assert got == yaml.safe_load(golden.read_text()), f"regenerate {golden.name} if intended"


@pytest.mark.parametrize("name", CASES)
def test_patch_applied_to_the_admitted_pod_gives_the_injected_pod(name: str) -> None:
    case = yaml.safe_load((TESTDATA / f"{name}.yaml").read_text())
    mutated = run_case(case)["pod"]
    patch = json_patch(case["pod"], mutated)
    assert jsonpatch.apply_patch(case["pod"], patch) == mutated


def test_injection_is_idempotent() -> None:
    case = yaml.safe_load((TESTDATA / "basic.yaml").read_text())
    once = inject(case["pod"], SETTINGS)
    assert decide(once, "shop", {}, OPERATOR_NS).value == "already-injected"


def test_injected_pod_meets_the_restricted_profile_for_the_sidecar() -> None:
    case = yaml.safe_load((TESTDATA / "basic.yaml").read_text())
    sidecar = inject(case["pod"], SETTINGS)["spec"]["initContainers"][0]
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar


def _review(pod: Mapping[str, Any], namespace: str, operation: str = "CREATE") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": operation,
            "namespace": namespace,
            "object": pod,
        },
    }


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    bundle = serving_tls.issue(
        [*serving_tls.dns_names("clawdbot-operator", OPERATOR_NS), "localhost"]
    )
    cert, key = bundle.write(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    return server, client


async def test_admission_endpoint_over_tls(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    labels = {"research": {"clawdbot.io/inject": "enabled"}}

    async def namespace_labels(ns: str) -> Mapping[str, str]:
        return labels.get(ns, {})

    metrics = WebhookMetrics()
    app = build_app(SETTINGS, namespace_labels, OPERATOR_NS, metrics)
    server = TestServer(app, host="localhost", port=0)
    await server.start_server(ssl=server_ctx)
    url = f"https://localhost:{server.port}{MUTATE_PATH}"
    pod = {"metadata": {"name": "nb"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json=_review(pod, "research"), ssl=client_ctx) as r:
                body = await r.json()
            response = body["response"]
            assert response["allowed"] is True and response["patchType"] == "JSONPatch"
            patch = json.loads(base64.b64decode(response["patch"]))
            patched = jsonpatch.apply_patch(pod, patch)
            assert patched["spec"]["initContainers"][0]["name"] == "clawdbot-sidecar"

            async with s.post(url, json=_review(pod, "elsewhere"), ssl=client_ctx) as r:
                assert "patch" not in (await r.json())["response"]
            async with s.post(url, json=_review(pod, "research", "UPDATE"), ssl=client_ctx) as r:
                assert "patch" not in (await r.json())["response"]
            # A pod the decision code can't read is admitted unchanged, with a warning.
            broken = _review({"spec": "not-an-object"}, "research")
            async with s.post(url, json=broken, ssl=client_ctx) as r:
                response = (await r.json())["response"]
            assert response["allowed"] is True and "patch" not in response
            assert "injection failed" in response["warnings"][0]
            async with s.post(url, data=b"nope", ssl=client_ctx) as r:
                assert r.status == 400
    finally:
        await server.close()
    sample = metrics.outcomes.labels
    assert sample("injected")._value.get() == 1
    assert sample("not-opted-in")._value.get() == 1
    assert sample("error")._value.get() == 1


def test_certificates_rotate_before_expiry() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    names = serving_tls.dns_names("clawdbot-operator", OPERATOR_NS)
    first = serving_tls.rotate(None, names, now)
    assert serving_tls.rotate(first, names, now + dt.timedelta(days=30)) is first
    # Two thirds into the leaf's year: a new leaf from the same CA (caBundle unchanged).
    later = serving_tls.rotate(first, names, now + dt.timedelta(days=250))
    assert later.ca_cert == first.ca_cert and later.cert != first.cert
    # Near the CA's end: a new CA as well.
    much_later = serving_tls.rotate(later, names, now + dt.timedelta(days=3000))
    assert much_later.ca_cert != first.ca_cert
