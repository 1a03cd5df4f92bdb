"""The sidecar end to end on loopback: the real openai client -> sidecar -> real ONNX runtime
or the cloud stub. Asserts the answer, where it came from and why, and what left the pod.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp import web
from sidecar_support import (
    CARD,
    EMAIL,
    LONG_FILLER,
    StartSidecar,
    inject,
    policy,
    received,
)

from clawdbot_api.v1alpha1 import RoutingPolicySpec
from clawdbot_cli.main import main as cli_main
from clawdbot_sidecar.accounting import audit
from clawdbot_sidecar.config import LocalEndpoint
from tests.support.servers import free_port, serve_app


async def test_short_prompt_is_answered_by_the_local_onnx_model(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    raw = await sc.chat("hello there")
    answer = raw.parse()
    assert raw.headers["x-clawdbot-target"] == "local"
    assert raw.headers["x-clawdbot-reason"] == "rule:short"
    assert answer.model == "tiny-chat"  # the runtime's model card, not the cloud's
    assert answer.choices[0].message.content
    assert answer.usage.completion_tokens > 0
    assert await received(cloud) == []  # nothing left the pod


async def test_long_prompt_goes_to_the_cloud_without_pii_and_comes_back_restored(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    prompt = f"{LONG_FILLER} Contact {EMAIL}, card {CARD}."
    raw = await sc.chat(prompt)
    answer = raw.parse()
    assert raw.headers["x-clawdbot-target"] == "cloud"
    assert raw.headers["x-clawdbot-reason"] == "rule:medium"
    # The stub echoes what it received; the client sees the original values again.
    assert EMAIL in answer.choices[0].message.content
    assert CARD in answer.choices[0].message.content
    sent = json.dumps(await received(cloud))
    assert EMAIL not in sent and "4111" not in sent
    assert "<EMAIL_1>" in sent and "<CREDIT_CARD_1>" in sent
    body = (await received(cloud))[0]["body"]
    assert body["model"] == "gpt-4o-mini"
    metrics = await sc.metrics()
    assert 'clawdbot_sidecar_redactions_total{entity="EMAIL"} 1.0' in metrics
    assert 'clawdbot_sidecar_decisions_total{reason="rule:medium",target="cloud"} 1.0' in metrics


async def test_streamed_cloud_answer_is_restored_across_chunk_boundaries(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    stream = await sc.client.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": f"{LONG_FILLER} Mail {EMAIL} please."}],
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    text = "".join(pieces)
    assert EMAIL in text
    assert "<EMAIL" not in text
    # The stub streams 3-character pieces, so the placeholder was split across events.
    assert len(pieces) > 10
    assert EMAIL not in json.dumps(await received(cloud))


async def test_streamed_local_answer(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    stream = await sc.client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks and all(c.model == "tiny-chat" for c in chunks)
    # The sidecar asked for usage to account tokens but hides it from a client that didn't.
    assert all(c.usage is None for c in chunks)
    metrics = await sc.metrics()
    assert 'clawdbot_sidecar_tokens_total{kind="completion",target="local"}' in metrics


async def test_cloud_failure_falls_back_to_local(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    await inject(cloud, status=503, count=1)
    raw = await sc.chat(LONG_FILLER)
    assert raw.headers["x-clawdbot-target"] == "local"
    assert raw.headers["x-clawdbot-reason"].startswith("fallback:cloud-failed")
    assert raw.parse().model == "tiny-chat"


async def test_dead_local_endpoint_is_skipped_then_cloud_takes_over(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    sc = await make_sidecar(policy(cloud), [dead, local_url])
    for _ in range(4):  # bounded: some picks hit the dead endpoint first, then retry
        raw = await sc.chat("hi")
        assert raw.headers["x-clawdbot-target"] == "local"
        assert raw.headers["x-clawdbot-reason"] == "rule:short"

    only_dead = await make_sidecar(policy(cloud), [dead])
    raw = await only_dead.chat("hi")
    assert raw.headers["x-clawdbot-target"] == "cloud"
    assert raw.headers["x-clawdbot-reason"].startswith("fallback:local-failed")


async def test_budget_shifts_traffic_to_local(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud, budgets={"cloudRequestsPerMinute": 1}), [local_url])
    first = await sc.chat(LONG_FILLER)
    second = await sc.chat(LONG_FILLER)
    assert first.headers["x-clawdbot-target"] == "cloud"
    assert second.headers["x-clawdbot-target"] == "local"
    assert second.headers["x-clawdbot-reason"] == "budget:cloudRequestsPerMinute"


async def test_blocked_entity_stays_local(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    spec = policy(cloud, redaction={"mode": "block"})
    sc = await make_sidecar(spec, [local_url])
    raw = await sc.chat(f"{LONG_FILLER} SSN 078-05-1120? no, 123-45-6789.")
    assert raw.headers["x-clawdbot-target"] == "local"
    assert raw.headers["x-clawdbot-reason"] == "redaction-block:US_SSN"
    assert await received(cloud) == []


async def test_reject_rule_and_policy_errors_use_openai_shape(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    with pytest.raises(openai.PermissionDeniedError) as err:
        await sc.chat("x " * 9000)  # beyond every rule: defaultTarget reject
    assert "refused" in err.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        await sc.client.chat.completions.create(model="tiny-chat", messages=[])
    assert bad.value.body is not None and bad.value.body["param"] == "messages"


async def test_malformed_and_oversized_bodies(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url], max_body_bytes=2048)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{sc.url}/v1/chat/completions", data=b"{not json") as r:
            assert r.status == 400
            assert "not valid JSON" in (await r.json())["error"]["message"]
        big = {"model": "tiny-chat", "messages": [{"role": "user", "content": "a" * 5000}]}
        async with s.post(f"{sc.url}/v1/chat/completions", json=big) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "request_too_large"
        async with s.get(f"{sc.url}/v1/nope") as r:
            assert r.status == 404
    # The sidecar is still serving.
    assert (await sc.chat("hi")).headers["x-clawdbot-target"] == "local"


async def test_overload_gets_429_with_retry_after(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url], max_concurrency=1)
    await inject(cloud, status=0, count=1, delayS=1.0)
    slow = asyncio.create_task(sc.chat(LONG_FILLER))
    await asyncio.sleep(0.3)
    with pytest.raises(openai.RateLimitError) as err:
        await sc.chat("hi")
    assert err.value.response.headers["retry-after"] == "1"
    assert (await slow).headers["x-clawdbot-target"] == "cloud"


async def test_circuit_breaker_opens_after_repeated_cloud_failures(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    await inject(cloud, status=500, count=100)
    reasons = []
    for _ in range(7):  # bounded: 5 failures open the circuit
        raw = await sc.chat(LONG_FILLER)
        reasons.append(raw.headers["x-clawdbot-reason"])
        assert raw.headers["x-clawdbot-target"] == "local"
    assert reasons[0].startswith("fallback:cloud-failed")
    assert reasons[-1] == "cloud-unavailable"
    assert len(await received(cloud)) == 5
    assert "clawdbot_sidecar_cloud_circuit_open 1.0" in await sc.metrics()

    # The cloud recovers: after the cooldown, routing picks it again, the probe succeeds and
    # the circuit closes.
    await inject(cloud, status=0, count=0)
    sc.core.breaker.cooldown_s = 0.2
    await asyncio.sleep(0.3)
    raw = await sc.chat(LONG_FILLER)
    assert raw.headers["x-clawdbot-target"] == "cloud"
    assert "clawdbot_sidecar_cloud_circuit_open 0.0" in await sc.metrics()


async def test_models_endpoint_lists_local_and_cloud(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    models = await sc.client.models.list()
    assert {m.id for m in models.data} == {"tiny-chat", "gpt-4o-mini"}


async def test_completions_endpoint(local_url: str, cloud: str, make_sidecar: StartSidecar) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    raw = await sc.client.completions.with_raw_response.create(
        model="tiny-chat", prompt="Once upon", max_tokens=5
    )
    assert raw.headers["x-clawdbot-target"] == "local"
    assert raw.parse().choices[0].text


async def test_cache_answers_repeats_but_not_answers_with_restored_pii(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud, cache={"enabled": True}), [local_url])
    first = await sc.chat("what is the capital of France")
    again = await sc.chat("what is the capital of France")
    assert first.headers["x-clawdbot-target"] == "local"
    assert again.headers["x-clawdbot-target"] == "cache"
    assert again.headers["x-clawdbot-reason"] == "cache-hit:local"
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content

    with_pii = f"{LONG_FILLER} Write to {EMAIL}."
    for _ in range(2):
        raw = await sc.chat(with_pii)
        assert raw.headers["x-clawdbot-target"] == "cloud"
    assert len(await received(cloud)) == 2  # the restored answer was not cached
    metrics = await sc.metrics()
    assert 'clawdbot_sidecar_cache_requests_total{result="hit"} 1.0' in metrics


async def test_audit_log_records_decisions_without_sensitive_values(
    local_url: str, cloud: str, make_sidecar: StartSidecar, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    spec = policy(cloud, audit={"enabled": True, "sink": "file", "path": str(path)})
    sc = await make_sidecar(spec, [local_url])
    await sc.chat(f"short one, mail {EMAIL}")
    await sc.chat(f"{LONG_FILLER} card {CARD}")
    assert sc.core.audit is not None
    await sc.core.audit.flush()
    text = path.read_text()
    assert EMAIL not in text and "4111" not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert [(r["target"], r["reason"]) for r in records] == [
        ("local", "rule:short"),
        ("cloud", "rule:medium"),
    ]
    assert records[1]["redacted"] == {"CREDIT_CARD": 1}
    assert audit.verify(path).ok


async def test_audit_key_from_the_operator_seals_the_chain_and_a_new_key_takes_over(
    local_url: str, cloud: str, make_sidecar: StartSidecar, tmp_path: Path
) -> None:
    """The key arrives with the policy (the discovery stream reads it from the Secret):
    records are HMAC-sealed with it, and a rotated key seals the records after it."""
    path = tmp_path / "audit.jsonl"
    sc = await make_sidecar(policy(cloud, audit={"enabled": True, "sink": "stdout"}), [local_url])
    file_audit = {"enabled": True, "sink": "file", "path": str(path)}
    file_spec = RoutingPolicySpec.model_validate(policy(cloud, audit=file_audit))
    base = sc.core.config.model_copy(update={"policy": file_spec})
    sc.core.apply(base.model_copy(update={"audit_hmac_key": b"key-1"}))
    await sc.chat("first")
    assert sc.core.audit is not None
    await sc.core.audit.flush()
    assert audit.verify(path, hmac_key=b"key-1").ok
    assert not audit.verify(path).ok  # sealed with the key, not a plain hash
    assert "key-1" not in repr(sc.core.config)

    first = sc.core.audit
    sc.core.apply(base.model_copy(update={"audit_hmac_key": b"key-2"}))
    assert sc.core.audit is not first  # a new key: a new log writer
    sc.core.apply(base.model_copy(update={"audit_hmac_key": b"key-2"}))
    second = sc.core.audit
    sc.core.apply(base.model_copy(update={"audit_hmac_key": b"key-2"}))
    assert sc.core.audit is second  # the same key again: nothing to change


async def test_pii_rules_see_entities_redaction_leaves_alone(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    rules = [
        {"name": "ssn-local", "match": {"containsPII": True, "piiEntities": ["US_SSN"]},
         "target": "local"},
        {"name": "rest-cloud", "match": {}, "target": "cloud"},
    ]  # fmt: skip
    spec = policy(cloud, rules=rules, redaction={"entities": ["EMAIL"]})
    sc = await make_sidecar(spec, [local_url])
    raw = await sc.chat("my SSN is 123-45-6789, keep it here")
    assert raw.headers["x-clawdbot-reason"] == "rule:ssn-local"
    other = await sc.chat(f"mail {EMAIL}")
    assert other.headers["x-clawdbot-reason"] == "rule:rest-cloud"


async def test_a_rule_refusal_wins_over_a_cached_answer(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    deny = {"name": "deny-evil", "match": {"headers": [{"name": "x-tenant", "value": "evil"}]},
            "target": "reject"}  # fmt: skip
    spec = policy(cloud, cache={"enabled": True})
    spec["rules"] = [deny, *spec["rules"]]
    sc = await make_sidecar(spec, [local_url])
    await sc.chat("what is the capital of France")
    assert (await sc.chat("what is the capital of France")).headers["x-clawdbot-target"] == "cache"
    with pytest.raises(openai.PermissionDeniedError):
        await sc.chat("what is the capital of France", extra_headers={"x-tenant": "evil"})


async def test_cloud_retries_transient_errors_within_max_retries(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    spec = policy(cloud)
    spec["cloud"]["maxRetries"] = 2
    sc = await make_sidecar(spec, [local_url])
    await inject(cloud, status=503, count=2)
    raw = await sc.chat(LONG_FILLER)
    assert raw.headers["x-clawdbot-target"] == "cloud"  # the third try succeeded
    assert raw.headers["x-clawdbot-reason"] == "rule:medium"
    assert len(await received(cloud)) == 3


async def test_audit_records_the_status_and_fallback_of_each_answer(
    local_url: str,
    cloud: str,
    make_sidecar: StartSidecar,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "audit.jsonl"
    spec = policy(cloud, audit={"enabled": True, "sink": "file", "path": str(path)})
    sc = await make_sidecar(spec, [local_url])
    await sc.chat("short and fine")  # 200, first target
    await inject(cloud, status=503, count=1)
    await sc.chat(LONG_FILLER)  # 200 from local after the cloud failed
    with pytest.raises(openai.PermissionDeniedError):
        await sc.chat("x " * 9000)  # 403: defaultTarget reject
    with pytest.raises(openai.BadRequestError):
        await sc.client.chat.completions.create(model="tiny-chat", messages=[])  # 400
    # The local endpoint goes away (as a discovery update says) and the cloud fails too.
    endpoint = sc.core.config.endpoints[0]
    dead = LocalEndpoint(url=f"http://127.0.0.1:{free_port()}/v1", model="tiny-chat")
    sc.core.apply(sc.core.config.model_copy(update={"endpoints": (dead,)}))
    await inject(cloud, status=503, count=1)
    with pytest.raises(openai.APIStatusError) as failed:
        await sc.chat("short, but nobody answers")
    assert failed.value.status_code == 502

    async def broken(*_: object) -> None:
        raise RuntimeError("a bug in the upstream client")

    sc.core.apply(sc.core.config.model_copy(update={"endpoints": (endpoint,)}))
    monkeypatch.setattr(sc.core.upstream, "post_json", broken)
    with pytest.raises(openai.InternalServerError):
        await sc.chat("short again")  # 500: the front's answer to an unexpected error
    assert sc.core.audit is not None
    await sc.core.audit.flush()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["target"], r["status"], r["fallback"]) for r in records] == [
        ("local", 200, False),
        ("local", 200, True),
        ("reject", 403, False),
        ("reject", 400, False),
        ("cloud", 502, True),
        ("local", 500, False),
    ]
    assert records[1]["reason"] == "fallback:cloud-failed (rule:medium)"
    assert audit.verify(path).ok
    assert cli_main(["audit", "verify", str(path)]) == 0
    # The status is covered by the hash chain like every other field.
    lines = path.read_text().splitlines(keepends=True)
    lines[4] = lines[4].replace('"status":502', '"status":200')
    path.write_text("".join(lines))
    result = audit.verify(path)
    assert result.problem == audit.Tamper.EDITED and result.line == 5
    assert cli_main(["audit", "verify", str(path)]) == 1


@pytest.mark.parametrize("status", [503, 429, 502])
async def test_a_replica_that_refuses_is_left_for_a_ready_one_not_for_the_cloud(
    local_url: str, cloud: str, make_sidecar: StartSidecar, status: int
) -> None:
    # A replica that is still loading its model (503), full (429) or behind a proxy with no
    # backend (502) did no work: the next replica answers, the cloud isn't needed.
    async def refuse(request: web.Request) -> web.Response:
        body = {"error": {"message": "model is loading", "type": "server_error"}}
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    async with serve_app(app) as starting:
        sc = await make_sidecar(policy(cloud), [f"{starting}/v1", local_url])
        for _ in range(8):  # bounded: P2C picks the refusing replica about half the time
            raw = await sc.chat("hi")
            assert raw.headers["x-clawdbot-target"] == "local"
            assert raw.headers["x-clawdbot-reason"] == "rule:short"
        assert await received(cloud) == []
        # With only the refusing replica, its own answer is what the fallback follows.
        only = await make_sidecar(
            policy(cloud, fallback={"localToCloud": False}), [f"{starting}/v1"]
        )
        with pytest.raises(openai.APIStatusError) as exc:
            await only.chat("hi")
        assert "model is loading" in exc.value.message


async def test_an_ejected_replica_is_back_as_soon_as_it_serves_its_model(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    port = free_port()
    sc = await make_sidecar(policy(cloud), [f"http://127.0.0.1:{port}/v1"])
    state = sc.core.pool.states[0]
    state.ejections = 5  # its next ejection lasts the longest backoff, a minute
    for _ in range(3):  # nothing listens yet: the cloud answers, and the replica is ejected
        raw = await sc.chat("hi")
        assert raw.headers["x-clawdbot-target"] == "cloud"
    assert not state.healthy(asyncio.get_running_loop().time())

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "tiny-chat"}]})

    async def chat(request: web.Request) -> web.Response:
        message = {"role": "assistant", "content": "local"}
        return web.json_response(
            {"id": "x", "object": "chat.completion", "model": "tiny-chat",
             "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        )  # fmt: skip

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        targets = []
        for _ in range(30):  # bounded: the probe runs every 0.5 s
            await asyncio.sleep(0.1)
            raw = await sc.chat("hi")
            targets.append(raw.headers["x-clawdbot-target"])
            if targets[-1] == "local":
                break
        assert targets[-1] == "local", targets  # seconds, not the minute of the ejection
    finally:
        await runner.cleanup()
