"""A RoutingPolicy applies whole or not at all, on a real API server with a real sidecar.

What the API server can check (entity names, perEntityMode keys) it refuses, naming the
field; what only Python can check (a custom pattern Python's re can't compile) the operator
reports as Ready=False, naming the field, and never sends down the discovery stream: a
running sidecar keeps its last good config in full, so its routing does not change.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from e2e.conftest import E2ECluster
from e2e.harness import routing
from e2e.harness.kube import Kubectl, KubectlError, condition
from e2e.harness.operator import Operator
from e2e.harness.routing import (
    EMAIL,
    LONG,
    check_local_and_cloud,
    deploy,
    model_server,
    sidecar_of,
    stub_requests,
)

pytestmark = pytest.mark.e2e

# A look-behind of variable width: valid in other regex dialects, refused by Python's re.
BAD_PATTERN = "(?<=a+)T-[0-9]+"
# How long the sidecar is watched for a snapshot it must not get.
QUIET_S = 5.0


@pytest.fixture
def operator(routed_operator: Operator) -> Operator:
    return routed_operator


def policy(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "clawdbot.io/v1alpha1", "kind": "RoutingPolicy",
            "metadata": {"name": "typo"}, "spec": spec}  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"redaction": {"entities": ["EMAIL", "EMIAL"]}}, "spec.redaction.entities[1]"),
        ({"redaction": {"perEntityMode": {"EMIAL": "mask"}}}, "spec.redaction.perEntityMode"),
        (
            {"rules": [{"name": "pii", "match": {"containsPII": True, "piiEntities": ["EMIAL"]},
                        "target": "adaptive"}]},
            "spec.rules[0].match.piiEntities[0]",
        ),
        (
            {"redaction": {"custom": [{"name": "EMAIL", "pattern": "x@y"}]}},
            "spec.redaction.custom",
        ),
    ],
)  # fmt: skip
def test_the_api_server_refuses_a_misspelt_entity_naming_the_field(
    kube: Kubectl, crds: None, spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(KubectlError) as refused:
        kube.apply(policy(**spec))
    assert field in refused.value.stderr, refused.value.stderr
    assert kube.get_or_none("routingpolicy", "typo") is None


def test_a_pattern_python_cant_compile_is_ready_false_naming_the_field(
    kube: Kubectl, operator: Operator
) -> None:
    kube.apply(policy(redaction={"custom": [{"name": "TICKET", "pattern": BAD_PATTERN}]}))
    found = kube.wait_for(
        "routingpolicy", "typo",
        lambda p: (condition(p, "Ready") or {}).get("reason") == "InvalidSpec",
        what="Ready=False, InvalidSpec",
    )  # fmt: skip
    ready = condition(found, "Ready")
    assert ready is not None and ready["status"] == "False"
    assert ready["message"].startswith(
        "spec.redaction.custom[0].pattern: custom entity 'TICKET': invalid regular expression"
    ), ready["message"]


def test_a_sidecar_keeps_its_last_good_config_in_full_after_a_bad_update(
    local_cluster: E2ECluster, kube: Kubectl, operator: Operator, cloud_stub: str, tmp_path: Path
) -> None:
    """The bad update also changes the cloud endpoint and the rules: had any of it been
    taken (the old half-apply), requests would go elsewhere. None is."""
    models = tmp_path / "models"
    model_pod, client_pod = deploy(kube, cloud_stub, models)
    with (
        routing.cloud_stub(tmp_path / "other-cloud.log") as other_cloud,
        model_server(local_cluster, model_pod, models),
        sidecar_of(local_cluster, client_pod, operator) as (base, sidecar),
    ):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        check_local_and_cloud(client, cloud_stub, sidecar.log_tail)
        applied = sidecar.log_tail(1000).count("applied snapshot")

        good = kube.get("routingpolicy", "chat")["spec"]
        bad = {**good,
               "cloud": {**good["cloud"], "baseURL": f"{other_cloud}/v1"},
               "rules": [{"name": "all-cloud", "target": "cloud"}],
               "redaction": {"custom": [{"name": "TICKET", "pattern": BAD_PATTERN}]}}  # fmt: skip
        kube.run("patch", "routingpolicy", "chat", "--type=merge", "-p", json.dumps({"spec": bad}))
        found = kube.wait_for(
            "routingpolicy", "chat",
            lambda p: (condition(p, "Ready") or {}).get("reason") == "InvalidSpec",
            what="Ready=False, InvalidSpec",
        )  # fmt: skip
        message = (condition(found, "Ready") or {}).get("message", "")
        assert "spec.redaction.custom[0].pattern" in message
        assert "its sidecars keep its last valid spec" in message

        deadline = time.monotonic() + QUIET_S
        while time.monotonic() < deadline:  # bounded: no snapshot may arrive meanwhile
            short = client.chat.completions.with_raw_response.create(
                model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            assert short.headers["x-clawdbot-target"] == "local", sidecar.log_tail()
            time.sleep(0.5)
        long = client.chat.completions.with_raw_response.create(
            model="tiny-chat", messages=[{"role": "user", "content": f"{LONG} Mail {EMAIL}."}]
        )
        assert long.headers["x-clawdbot-target"] == "cloud"
        assert EMAIL in (long.parse().choices[0].message.content or "")
        sent = stub_requests(cloud_stub)
        assert len(sent) == 2 and EMAIL not in json.dumps(sent)  # the old cloud, redacted
        assert stub_requests(other_cloud) == []
        log = sidecar.log_tail(1000)
        assert log.count("applied snapshot") == applied and "rejected snapshot" not in log
