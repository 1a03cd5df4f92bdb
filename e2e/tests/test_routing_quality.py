"""Answer quality in the cluster: the cascade escalates an unsure local answer to the
cloud stand-in, and feedback moves the adaptive router's choice for a class of prompts.

Real parts as in test_routing.py: the operator (webhook, discovery stream), the ONNX
runtime serving the project's tiny chat model at its pod IP (its answers carry real token
log-probabilities), the injected sidecar as a real process, the ``openai`` client; the
cloud is the loopback stand-in.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from e2e.conftest import E2ECluster
from e2e.harness.kube import Kubectl
from e2e.harness.operator import Operator
from e2e.harness.routing import deploy, metric, model_server, sidecar_of, stub_requests

pytestmark = pytest.mark.e2e

HARD = "Prove step by step, and derive why the algorithm's complexity is optimal: case {}"
EASY = "hello there, friend number {}"


@pytest.fixture
def operator(routed_operator: Operator) -> Operator:
    return routed_operator


def patch_policy(kube: Kubectl, spec: dict[str, Any]) -> None:
    kube.run("patch", "routingpolicy", "chat", "--type=merge", "-p", json.dumps({"spec": spec}))


def until(check: Callable[[], bool], what: str, log_tail: Callable[[], str], s: float = 30) -> None:
    deadline = time.monotonic() + s  # bounded: until the new policy reached the sidecar
    while not check():
        assert time.monotonic() < deadline, f"{what}\n{log_tail()}"
        time.sleep(0.3)


def feedback(base: str, answer_id: str, score: float) -> int:
    request = urllib.request.Request(
        f"{base}/v1/feedback",
        data=json.dumps({"request_id": answer_id, "score": score}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        return int(resp.status)


def test_an_unsure_local_answer_is_escalated_and_feedback_moves_the_router(
    local_cluster: E2ECluster,
    kube: Kubectl,
    operator: Operator,
    cloud_stub: str,
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    model_pod, client_pod = deploy(kube, cloud_stub, models)
    # The cascade for short prompts, with a threshold the tiny model's answers never reach.
    patch_policy(
        kube,
        {
            "rules": [{"name": "maybe-local", "match": {"maxTokens": 512}, "target": "cascade"}],
            "quality": {"cascade": {"threshold": 0.99}},
            "audit": {"enabled": True, "sink": "stdout"},
        },
    )
    with (
        model_server(local_cluster, model_pod, models, timeout=60),
        sidecar_of(local_cluster, client_pod, operator) as (base, sidecar),
    ):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)

        def ask(content: str, **kw: Any) -> Any:
            return client.chat.completions.with_raw_response.create(
                model="tiny-chat", messages=[{"role": "user", "content": content}],
                max_tokens=6, **kw,
            )  # fmt: skip

        until(
            lambda: "cascade:" in ask("hello").headers.get("x-clawdbot-reason", ""),
            "the cascade policy did not reach the sidecar",
            sidecar.log_tail,
        )
        raw = ask("what is a pod?")
        reason = raw.headers["x-clawdbot-reason"]
        assert raw.headers["x-clawdbot-target"] == "cloud", sidecar.log_tail()
        assert reason.startswith("rule:maybe-local cascade:escalated confidence=0.")
        assert reason.endswith("threshold=0.99")
        answer = raw.parse().choices[0].message.content or ""
        assert answer.startswith("Cloud answer.")  # the stand-in's, not the local model's
        assert any("what is a pod?" in json.dumps(r["body"]) for r in stub_requests(cloud_stub))
        answer_id = raw.headers["x-clawdbot-request-id"]
        # The audit record (stdout, the sidecar's log) holds the confidence and threshold.
        records = [
            json.loads(line[line.index("{") :])
            for line in sidecar.log_tail(400).splitlines()
            if '"kind":"decision"' in line.replace(" ", "")
        ]
        mine = [r for r in records if r.get("clawdbot_request_id") == answer_id]
        assert mine, sidecar.log_tail(60)
        assert mine[0]["target"] == "cloud" and mine[0]["threshold"] == 0.99
        assert 0 < mine[0]["confidence"] < 0.99
        assert metric(base, 'clawdbot_sidecar_cascade_total{outcome="escalated"}') >= 1

        # Now the adaptive router, cloud priced so that local wins while nothing is known
        # of quality. The app scores local answers to hard prompts 0 and to easy ones 1.
        patch_policy(
            kube,
            {
                "rules": [],
                "defaultTarget": "adaptive",
                "adaptive": {"costWeight": 20, "qualityWeight": 2, "exploration": 0.3},
                "cloud": {"pricing": {"inputPerMillionTokens": 500,
                                      "outputPerMillionTokens": 500}},
            },
        )  # fmt: skip
        until(
            lambda: ask("hello").headers.get("x-clawdbot-reason", "").startswith("adaptive:"),
            "the adaptive policy did not reach the sidecar",
            sidecar.log_tail,
        )

        def rounds(n: int, scored: bool, first: int) -> dict[str, list[str]]:
            got: dict[str, list[str]] = {"hard": [], "easy": []}
            # Every prompt once: the same one asked again would count as a re-ask.
            for i in range(first, first + n):  # bounded: 2n requests of a few tokens each
                for kind, template in (("hard", HARD), ("easy", EASY)):
                    raw = ask(template.format(i))
                    target = raw.headers["x-clawdbot-target"]
                    got[kind].append(target)
                    if scored and target == "local":
                        score = 0.0 if kind == "hard" else 1.0
                        assert feedback(base, raw.headers["x-clawdbot-request-id"], score) == 200
            return got

        # Nothing known of quality: local, quicker and free, takes hard and easy prompts.
        before = rounds(12, scored=False, first=0)
        assert before["hard"][-6:].count("local") >= 5, (before, sidecar.log_tail())
        # The app's scores: local's answers to hard prompts are bad, to easy ones good.
        after = rounds(30, scored=True, first=100)
        recorded = metric(
            base,
            'clawdbot_sidecar_feedback_total{result="recorded",source="explicit",target="local"}',
        )
        assert recorded >= 10
        # Hard prompts moved to the cloud; easy ones stay local.
        assert after["hard"][-8:].count("cloud") >= 7, (before, after, sidecar.log_tail())
        assert after["easy"][-8:].count("local") >= 7, (before, after, sidecar.log_tail())
