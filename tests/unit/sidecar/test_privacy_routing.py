"""Rules that mean what they say: what a policy keeps home stays home, whatever fails.

Real sidecar (HTTP front and routing core), the real ONNX runtime as the local model, the
cloud stand-in on loopback recording what reached it, the real openai client as the app.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest
from sidecar_support import EMAIL, LONG_FILLER, StartSidecar, policy, received

from clawdbot_sidecar.config import SidecarConfig
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.upstream import Upstream
from tests.support.servers import free_port

SSN = "078-05-1120"
PII_LOCAL = {"name": "pii-local", "match": {"containsPII": True}, "target": "local"}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def dead_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


async def test_a_pii_rule_is_not_undone_by_the_local_to_cloud_fallback(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    spec = policy(cloud, rules=[PII_LOCAL], defaultTarget="cloud")
    assert spec.get("fallback", {}).get("localToCloud", True)  # on, as by default
    sc = await make_sidecar(spec, [dead_endpoint()])
    with pytest.raises(openai.APIStatusError) as refused:
        await sc.chat(f"my mail is {EMAIL}")
    assert refused.value.status_code in (502, 503)
    # Without PII the same dead local model does fall back to the cloud.
    raw = await sc.chat("no personal data in here")
    assert raw.headers["x-clawdbot-target"] == "cloud"
    sent = json.dumps(await received(cloud))
    assert EMAIL not in sent and "<EMAIL" not in sent


async def test_a_pii_request_queues_locally_when_local_is_only_overloaded(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    spec = policy(cloud, rules=[PII_LOCAL], defaultTarget="cloud", fallback={"maxLocalQueue": 1})
    sc = await make_sidecar(spec, [local_url])
    sc.core.pool.states[0].in_flight = 5  # every endpoint's queue is over the limit
    raw = await sc.chat(f"my mail is {EMAIL}")
    assert raw.headers["x-clawdbot-target"] == "local"
    assert raw.headers["x-clawdbot-reason"] == "local-overloaded"
    assert await received(cloud) == []


async def test_an_entity_a_rule_names_but_redaction_lacks_never_leaves_raw(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    spec = policy(
        cloud,
        rules=[
            {"name": "long-cloud", "match": {"minTokens": 400}, "target": "cloud"},
            {"name": "ssn-local", "match": {"containsPII": True, "piiEntities": ["US_SSN"]},
             "target": "local"},
        ],
        defaultTarget="local",
        redaction={"entities": ["EMAIL"]},
    )  # fmt: skip
    sc = await make_sidecar(spec, [local_url])
    raw = await sc.chat(f"{LONG_FILLER} The SSN is {SSN}.")
    assert raw.headers["x-clawdbot-target"] == "local"
    assert raw.headers["x-clawdbot-reason"] == "unredacted:US_SSN"
    # A long prompt without it goes to the cloud as the rule says.
    raw = await sc.chat(f"{LONG_FILLER} Mail {EMAIL}.")
    assert raw.headers["x-clawdbot-target"] == "cloud"
    assert SSN not in json.dumps(await received(cloud))


async def test_uninspectable_content_stays_local_by_default(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud, defaultTarget="cloud", rules=[]), [local_url])
    # The local model (the project's text-only runtime) is who refuses the image: the
    # request went there, and nothing went to the cloud.
    with pytest.raises(openai.BadRequestError, match="only text content parts"):
        await sc.client.chat.completions.create(
            model="tiny-chat",
            messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}, IMAGE]}],
            max_tokens=4,
        )
    assert await received(cloud) == []
    assert 'reason="uninspectable:image",target="local"' in await sc.metrics()


async def test_token_id_prompts_never_reach_the_cloud(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud, defaultTarget="cloud", rules=[]), [dead_endpoint()])
    with pytest.raises(openai.APIStatusError):
        await sc.client.completions.create(model="tiny-chat", prompt=[1, 2, 3], max_tokens=2)
    assert await received(cloud) == []


async def test_uninspectable_reject_refuses_and_allow_sends(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE]}]
    rejecting = await make_sidecar(
        policy(cloud, defaultTarget="cloud", rules=[], redaction={"uninspectable": "reject"}),
        [local_url],
    )
    with pytest.raises(openai.BadRequestError) as refused:
        await rejecting.client.chat.completions.create(model="tiny-chat", messages=messages)
    assert refused.value.code == "uninspectable_content"
    assert await received(cloud) == []
    allowing = await make_sidecar(
        policy(cloud, defaultTarget="cloud", rules=[], redaction={"uninspectable": "allow"}),
        [local_url],
    )
    raw = await allowing.client.chat.completions.with_raw_response.create(
        model="tiny-chat", messages=messages
    )
    assert raw.headers["x-clawdbot-target"] == "cloud"
    assert len(await received(cloud)) == 1


async def test_a_config_that_fails_to_build_leaves_the_old_one_in_force_whole(
    cloud: str, local_url: str
) -> None:
    def config(spec: dict[str, Any]) -> SidecarConfig:
        return SidecarConfig.model_validate(
            {"policy": spec, "endpoints": [{"url": local_url, "model": "tiny-chat"}]}
        )

    upstream = Upstream.create(connect_timeout_s=5)
    core = RoutingCore(config(policy(cloud)), upstream)
    try:
        before = core.snapshot
        broken = policy(
            "http://127.0.0.1:9",
            redaction={"enabled": False},
            cache={"enabled": True, "backend": "redis", "redisURL": "redis://localhost:notaport"},
        )
        with pytest.raises(ValueError, match=r"[Pp]ort"):
            core.apply(config(broken))
        assert core.snapshot is before  # the cloud URL and the redaction too
        assert core.config.policy.cloud is not None
        assert core.config.policy.cloud.base_url == f"{cloud}/v1"
        assert core.redactor.config.enabled
    finally:
        await core.close()
        await upstream.close()


NAME_ONLY_THE_MODEL_FINDS = "Oluwaseun Adeyemi-Bakare"


async def test_the_model_tier_removes_what_the_patterns_miss_before_the_cloud(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    prompt = f"Yesterday {NAME_ONLY_THE_MODEL_FINDS} came back with a cough."
    fast_only = await make_sidecar(policy(cloud, rules=[], defaultTarget="cloud"), [local_url])
    await fast_only.chat(prompt)
    assert NAME_ONLY_THE_MODEL_FINDS in json.dumps(await received(cloud))  # the patterns miss it

    async with aiohttp.ClientSession() as s:
        await s.delete(f"{cloud}/_stub/requests")
    with_model = await make_sidecar(
        policy(cloud, rules=[], defaultTarget="cloud", redaction={"model": {"enabled": True}}),
        [local_url],
    )
    raw = await with_model.chat(prompt)
    assert raw.headers["x-clawdbot-target"] == "cloud"
    sent = json.dumps(await received(cloud))
    assert NAME_ONLY_THE_MODEL_FINDS not in sent and "<PERSON_" in sent
    # Pseudonymized, so the answer carries the name again.
    assert NAME_ONLY_THE_MODEL_FINDS in raw.parse().choices[0].message.content


async def test_a_model_tier_that_cannot_load_closes_the_cloud(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    spec = policy(cloud, redaction={"model": {"enabled": True, "pipeline": "xx_not_installed"}})
    sc = await make_sidecar(spec, [local_url])
    assert sc.core.snapshot.model_tier_error is not None
    raw = await sc.chat(f"{LONG_FILLER} nothing personal here")
    assert raw.headers["x-clawdbot-target"] == "local"  # the cloud rule, held back
    assert raw.headers["x-clawdbot-reason"] == "model-tier-unavailable"
    assert await received(cloud) == []
    down = await make_sidecar(spec, [dead_endpoint()])
    with pytest.raises(openai.APIStatusError):
        await down.chat(f"{LONG_FILLER} nothing personal here")
    assert await received(cloud) == []
