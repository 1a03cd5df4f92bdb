"""Answer quality in the router: request ids, feedback, re-asks, confidence, the cascade.

Real parts: the sidecar's HTTP front and core, the project's ONNX runtime (its tiny chat
model answers with real token log-probabilities) and the loopback cloud stand-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sidecar_support import API_KEY, EMAIL, Sidecar, StartSidecar, policy, received

from clawdbot_api.v1alpha1.routingpolicy import Adaptive, Feedback
from clawdbot_runtime.bert_onnx import build_encoder
from clawdbot_sidecar.accounting import audit
from clawdbot_sidecar.accounting.feedback import FeedbackBook, FeedbackResult, Remembered
from clawdbot_sidecar.accounting.ledger import reward
from clawdbot_sidecar.config import SidecarConfig
from clawdbot_sidecar.routing.confidence import StreamMeter, answer_confidence
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.routing.decision import Bandit
from clawdbot_sidecar.routing.semantic import Example, SemanticState
from clawdbot_sidecar.upstream import Upstream
from tests.support.bert import tiny_bert
from tests.support.servers import runtime_server

PROMPT = "hello there"


def cascade_policy(cloud: str, threshold: float, **quality: Any) -> dict[str, Any]:
    return policy(
        cloud,
        rules=[{"name": "maybe-local", "match": {"maxTokens": 512}, "target": "cascade"}],
        quality={"cascade": {"threshold": threshold, **quality}},
    )


async def post_feedback(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/feedback", json=body) as r:
        return r.status, await r.json()


def metric(text: str, name: str) -> float:
    """The sample of a full series name (labels in Prometheus' sorted order) in ``text``."""
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.split()[-1])
    return 0.0


# -- the reward and the bandit ----------------------------------------------------------------


def test_a_reward_correction_is_exactly_the_corrected_observation() -> None:
    """b += delta x leaves the bandit where observing the corrected reward would have."""
    adaptive = Adaptive()
    x = (1.0, 0.2, 0.7, 0.0, 0.1, 0.1, 0.0, 0.3)
    first = reward(True, 0.5, 0.0, adaptive)
    corrected = reward(True, 0.5, 0.0, adaptive, quality=0.0)
    assert math.isclose(corrected, first - adaptive.quality_weight)
    assert reward(False, 0.5, 0.0, adaptive, quality=1.0) == -1.0
    later, direct = Bandit(adaptive, seed=1), Bandit(adaptive, seed=1)
    later.update("local", x, first)
    later.correct("local", x, corrected - first)
    direct.update("local", x, corrected)
    assert later.scores(x) == pytest.approx(direct.scores(x))


def test_feedback_turns_the_bandit_away_from_local_for_the_prompts_it_fails() -> None:
    """Hard prompts (high complexity) answered locally get bad scores, easy ones good: the
    bandit learns to send the hard ones to the cloud and keep the easy ones local."""
    adaptive = Adaptive(cost_weight=0.0, exploration=0.2)
    bandit = Bandit(adaptive, seed=3)
    now = [0.0]
    book = FeedbackBook(Feedback(), clock=lambda: now[0])

    def context(hard: bool) -> tuple[float, ...]:
        return (1.0, 0.1, 0.9 if hard else 0.05, 0.0, 0.1, 0.1, 0.0, 0.1)

    def cloud_choice_rate(hard: bool) -> float:
        return sum(bandit.choose(context(hard)) == "cloud" for _ in range(50)) / 50

    for i in range(300):
        hard = i % 2 == 0
        x = context(hard)
        arm = bandit.choose(x)
        # Local is quicker than the cloud: without quality, local wins everything.
        latency = 0.3 if arm == "local" else 1.2
        r = reward(True, latency, 0.0, adaptive)
        bandit.update(arm, x, r)
        answer_id = f"a{i}"
        book.remember(
            answer_id,
            Remembered(now[0], arm, "adaptive:linUCB", arm, x, bandit, adaptive.quality_weight),
        )
        good = not (hard and arm == "local")
        assert book.score(answer_id, 1.0 if good else 0.0)[0] == FeedbackResult.RECORDED
        now[0] += 1.0
    assert cloud_choice_rate(hard=True) > 0.8
    assert cloud_choice_rate(hard=False) < 0.2


def test_feedback_is_bounded_in_time_and_size() -> None:
    now = [0.0]
    book = FeedbackBook(Feedback(window_seconds=10, max_entries=3), clock=lambda: now[0])
    for i in range(5):
        book.remember(f"a{i}", Remembered(now[0], "local", "default"))
    assert len(book) == 3
    assert book.score("a0", 1.0)[0] == FeedbackResult.UNKNOWN  # forgotten: over maxEntries
    assert book.score("a4", 1.0)[0] == FeedbackResult.RECORDED
    assert book.score("a4", 0.0)[0] == FeedbackResult.DUPLICATE  # the first score stands
    now[0] = 11.0
    assert book.score("a3", 1.0)[0] == FeedbackResult.UNKNOWN  # out of the window
    assert len(book) == 0


# -- confidence -------------------------------------------------------------------------------


def test_confidence_is_the_geometric_mean_token_probability() -> None:
    chat = {"choices": [{"logprobs": {"content": [{"logprob": math.log(0.5)},
                                                   {"logprob": math.log(0.125)}]}}]}  # fmt: skip
    assert answer_confidence(chat) == pytest.approx(0.25)
    legacy = {"choices": [{"logprobs": {"token_logprobs": [math.log(0.8)] * 3}}]}
    assert answer_confidence(legacy) == pytest.approx(0.8)
    assert answer_confidence({"choices": [{"logprobs": None}]}) is None
    assert answer_confidence({"choices": [{"logprobs": {"content": []}}]}) == 0.0
    meter = StreamMeter()
    for lp in (math.log(0.9), math.log(0.1)):
        meter.feed({"choices": [{"index": 0, "delta": {"content": "x"},
                                 "logprobs": {"content": [{"logprob": lp}]}}]})  # fmt: skip
    assert meter.seen == 2 and meter.confidence == pytest.approx(0.3)
    plain = StreamMeter()
    plain.feed({"choices": [{"index": 0, "delta": {"content": "x"}}]})
    assert plain.seen == 1 and plain.confidence is None


# -- request ids and feedback over HTTP -------------------------------------------------------


async def test_answers_carry_a_request_id_that_feedback_scores_once(
    local_url: str, cloud: str, make_sidecar: StartSidecar, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    spec = policy(cloud, audit={"enabled": True, "sink": "file", "path": str(path)})
    sc = await make_sidecar(spec, [local_url])
    first = await sc.chat(PROMPT, extra_headers={"x-request-id": "app-chosen"})
    second = await sc.chat("another question", extra_headers={"x-request-id": "app-chosen"})
    ids = [first.headers["x-clawdbot-request-id"], second.headers["x-clawdbot-request-id"]]
    # The sidecar's own ids: distinct even when the app repeats its x-request-id.
    assert first.headers["x-request-id"] == "app-chosen"
    assert ids[0] != ids[1] and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)

    assert await post_feedback(sc.url, {"request_id": ids[0], "score": 0.0}) == (
        200,
        {"request_id": ids[0], "status": "recorded"},
    )
    status, body = await post_feedback(sc.url, {"request_id": ids[0], "score": 1})
    assert status == 409 and body["error"]["code"] == "already_scored"
    status, body = await post_feedback(sc.url, {"request_id": "f" * 32, "score": 1})
    assert status == 404 and body["error"]["code"] == "unknown_request_id"
    status, body = await post_feedback(sc.url, {"request_id": ids[1], "score": 7})
    assert status == 400 and body["error"]["param"] == "score"
    assert (await post_feedback(sc.url, {"request_id": ids[1], "score": True}))[0] == 200

    text = await sc.metrics()
    recorded = 'clawdbot_sidecar_feedback_total{result="recorded",source="explicit",target="local"}'
    assert metric(text, recorded) == 2
    assert sc.core.audit is not None
    await sc.core.audit.flush()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    decisions = [r for r in records if r["kind"] == "decision"]
    assert [d["clawdbot_request_id"] for d in decisions] == ids
    scored = [r for r in records if r["kind"] == "feedback"]
    assert [(r["clawdbot_request_id"], r["score"], r["result"]) for r in scored] == [
        (ids[0], 0.0, "recorded"),
        (ids[0], 1.0, "duplicate"),
        ("f" * 32, 1.0, "unknown"),
        (ids[1], 1.0, "recorded"),
    ]
    assert audit.verify(path).ok


async def test_the_same_question_asked_again_scores_the_first_answer_bad(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    first = await sc.chat(PROMPT)
    await sc.chat(PROMPT)  # the app's user asked again: the first answer did not do
    await sc.chat("something else")
    text = await sc.metrics()
    reask = 'clawdbot_sidecar_feedback_total{result="recorded",source="reask",target="local"}'
    assert metric(text, reask) == 1
    status, _ = await post_feedback(
        sc.url, {"request_id": first.headers["x-clawdbot-request-id"], "score": 1}
    )
    assert status == 409  # scored already, by the re-ask


# -- the cascade ------------------------------------------------------------------------------


async def local_confidence(sc: Any) -> float:
    raw = await sc.chat(PROMPT, temperature=0)
    assert raw.headers["x-clawdbot-target"] == "local"
    return float(raw.headers["x-clawdbot-confidence"])


async def test_cascade_keeps_a_confident_local_answer_and_escalates_an_unsure_one(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    probe = await make_sidecar(cascade_policy(cloud, 0.0), [local_url])
    confidence = await local_confidence(probe)
    assert 0 < confidence < 1
    raw = await probe.chat(PROMPT, temperature=0)
    reason = raw.headers["x-clawdbot-reason"]
    assert reason == f"rule:maybe-local cascade:kept confidence={confidence:.2f} threshold=0.00"
    # The app did not ask for log-probabilities: the sidecar's own request for them is
    # invisible to it.
    assert raw.parse().choices[0].logprobs is None
    assert await received(cloud) == []

    # Just above the local answer's confidence: the cloud answers instead.
    above = round(confidence + 0.01, 2)
    sc = await make_sidecar(cascade_policy(cloud, above), [local_url])
    raw = await sc.chat(PROMPT, temperature=0)
    assert raw.headers["x-clawdbot-target"] == "cloud"
    assert raw.headers["x-clawdbot-reason"] == (
        f"rule:maybe-local cascade:escalated confidence={confidence:.2f} threshold={above:.2f}"
    )
    sent = await received(cloud)
    assert len(sent) == 1 and "logprobs" not in sent[0]["body"]
    # Just below: local again.
    below = round(confidence - 0.01, 2)
    sc = await make_sidecar(cascade_policy(cloud, below), [local_url])
    raw = await sc.chat(PROMPT, temperature=0)
    assert raw.headers["x-clawdbot-target"] == "local"
    text = await sc.metrics()
    assert metric(text, 'clawdbot_sidecar_cascade_total{outcome="kept"}') == 1


async def test_a_cascade_never_takes_a_pii_rules_request_to_the_cloud(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    spec = policy(
        cloud,
        rules=[{"name": "private", "match": {"containsPII": True}, "target": "cascade"},
               {"name": "rest", "match": {}, "target": "cascade"}],
        quality={"cascade": {"threshold": 1.0}},
    )  # fmt: skip
    sc = await make_sidecar(spec, [local_url])
    raw = await sc.chat(f"write to {EMAIL}")
    assert raw.headers["x-clawdbot-target"] == "local"
    assert "rule:private cascade:not-escalated:private" in raw.headers["x-clawdbot-reason"]
    assert await received(cloud) == []
    raw = await sc.chat(PROMPT)  # no PII: the unsure answer goes to the cloud, as asked
    assert raw.headers["x-clawdbot-target"] == "cloud"


async def stream_text(sc: Any, **kw: Any) -> tuple[dict[str, str], str, list[Any]]:
    raw = await sc.client.chat.completions.with_raw_response.create(
        model="tiny-chat", messages=[{"role": "user", "content": PROMPT}], max_tokens=24,
        temperature=0, stream=True, **kw,
    )  # fmt: skip
    pieces, logprobs = [], []
    async for chunk in raw.parse():
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.logprobs is not None:
                logprobs.append(choice.logprobs)
    return dict(raw.headers), "".join(pieces), logprobs


async def test_a_streamed_cascade_holds_tokens_then_streams_local_or_the_cloud(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    kept = await make_sidecar(cascade_policy(cloud, 0.0, holdTokens=4), [local_url])
    whole = await kept.client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": PROMPT}], max_tokens=24,
        temperature=0,
    )  # fmt: skip
    local_text = whole.choices[0].message.content
    assert local_text
    headers, text, logprobs = await stream_text(kept)
    assert headers["x-clawdbot-target"] == "local"
    assert "cascade:kept" in headers["x-clawdbot-reason"]
    assert text == local_text and logprobs == []  # held chunks and the rest, nothing lost
    # An app that asks for log-probabilities gets them.
    _, _, asked = await stream_text(kept, logprobs=True)
    assert asked and all(lp.content for lp in asked)

    unsure = await make_sidecar(cascade_policy(cloud, 1.0, holdTokens=4), [local_url])
    headers, text, _ = await stream_text(unsure)
    assert headers["x-clawdbot-target"] == "cloud"
    assert "cascade:escalated" in headers["x-clawdbot-reason"]
    # Only the cloud's answer reached the app: none of the held local tokens.
    assert text == f"Cloud answer. You said: {PROMPT}"
    assert len(await received(cloud)) == 1
    # The local stream closed on purpose is not a failure of its endpoint.
    assert unsure.core.pool.states[0].consecutive_failures == 0


# -- the semantic router ----------------------------------------------------------------------

EXAMPLES = [
    *({"prompt": p, "label": "local"} for p in ("the cat sat on a mat", "the sun is hot",
                                                "a dog sat in the sun", "the mat is hot")),
    *({"prompt": p, "label": "cloud"} for p in ("rain falls in the park", "the dog ran in rain",
                                                "rain in the park falls", "a cat ran in rain")),
]  # fmt: skip


@pytest.fixture(scope="module")
def encoder_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The project's runtime serving a small BERT encoder built by the ONNX builder."""
    root = tmp_path_factory.mktemp("encoder")
    tiny_bert(root / "hf")
    build_encoder(root / "hf", root / "repo" / "tiny-bert" / "1")
    with runtime_server(root / "repo") as url:
        yield url


@contextlib.asynccontextmanager
async def semantic_core(
    spec: dict[str, Any], local_url: str, encoder_url: str, examples: str | None = None
) -> AsyncIterator[RoutingCore]:
    """A routing core for ``spec`` with the chat model and the tiny BERT encoder as its
    local endpoints (and the semantic router's labelled examples, as JSON lines)."""
    config: dict[str, Any] = {
        "policy": spec,
        "endpoints": [{"url": local_url, "model": "tiny-chat"},
                      {"url": encoder_url, "model": "tiny-bert"}],
    }  # fmt: skip
    if examples is not None:
        config["semanticExamples"] = examples
    validated = SidecarConfig.model_validate(config)
    upstream = Upstream.create(connect_timeout_s=5.0)
    core = RoutingCore(validated.model_copy(update={"cloud_api_key": API_KEY}), upstream, seed=1)
    try:
        yield core
    finally:
        await core.close()
        await upstream.close()


async def test_the_semantic_router_gives_the_bandit_its_prediction_and_learns_from_feedback(
    local_url: str, encoder_url: str, cloud: str, serve_front: Any
) -> None:
    spec = policy(
        cloud,
        localModels=[{"name": "tiny-chat"}, {"name": "tiny-bert"}],
        rules=[{"name": "pinned", "match": {"headers": [{"name": "x-pin"}]}, "target": "local"}],
        defaultTarget="adaptive",
        quality={"semantic": {"enabled": True, "embeddingModel": "tiny-bert",
                              "examplesConfigMapRef": {"name": "examples"}}},
    )  # fmt: skip
    async with (
        semantic_core(
            spec, local_url, encoder_url, examples="\n".join(json.dumps(e) for e in EXAMPLES)
        ) as core,
        serve_front(core) as url,
    ):
        sc = Sidecar(url, core)
        semantic = core.snapshot.semantic
        assert semantic is not None and not semantic.ready
        await sc.chat("the cat sat in the sun")  # starts embedding the examples
        for _ in range(100):  # bounded: the background fit takes a few runtime calls
            if semantic.ready:
                break
            await asyncio.sleep(0.05)
        router = semantic.router
        assert router is not None and router.examples == len(EXAMPLES)

        prompt = "the cat sat on a mat"
        vector = (await core._embed("tiny-bert", [prompt]))[0]
        expected = 1.0 - router.predict(vector)
        assert expected < 0.5  # like the local examples
        seen: list[tuple[float, ...]] = []
        real_choose = core.bandit.choose

        def spy(x: tuple[float, ...]) -> Any:
            seen.append(x)
            return real_choose(x)

        core.bandit.choose = spy  # type: ignore[method-assign]
        await sc.chat(prompt)
        assert seen and seen[-1][2] == pytest.approx(expected)  # not the keyword score

        # A local answer to that prompt scored bad: local looks less good for it.
        raw = await sc.chat(prompt, extra_headers={"x-pin": "1"})
        assert raw.headers["x-clawdbot-target"] == "local"
        before = router.predict(vector)
        answer_id = raw.headers["x-clawdbot-request-id"]
        assert (await post_feedback(url, {"request_id": answer_id, "score": 0}))[0] == 200
        assert router.feedback == 1 and router.predict(vector) < before


async def test_the_semantic_cache_answers_the_same_question_but_not_its_negation(
    local_url: str, encoder_url: str, cloud: str, serve_front: Any
) -> None:
    spec = policy(
        cloud,
        localModels=[{"name": "tiny-chat"}, {"name": "tiny-bert"}],
        quality={"semantic": {"embeddingModel": "tiny-bert", "cache": {"enabled": True}}},
    )
    async with semantic_core(spec, local_url, encoder_url) as core, serve_front(core) as url:
        sc = Sidecar(url, core)
        first = await sc.chat("is the cat on the mat", temperature=0)
        assert first.headers["x-clawdbot-target"] == "local"
        # The same conversation (the seed differs, so it is no re-ask): a hit.
        again = await sc.chat("is the cat on the mat", temperature=0, seed=9)
        assert again.headers["x-clawdbot-target"] == "cache"
        assert again.headers["x-clawdbot-reason"] == "semantic-cache-hit:local"
        assert float(again.headers["x-clawdbot-semantic-similarity"]) > 0.999
        assert again.parse().choices[0].message.content == (
            first.parse().choices[0].message.content
        )
        # Its negation, and another number, are never answered from it.
        negated = await sc.chat("is the cat not on the mat", temperature=0, seed=9)
        assert negated.headers["x-clawdbot-target"] == "local"
        assert "x-clawdbot-semantic-similarity" not in negated.headers
        await sc.chat("the cat sat 2 times", temperature=0)
        other = await sc.chat("the cat sat 3 times", temperature=0)
        assert other.headers["x-clawdbot-target"] == "local"
        # An answer to a prompt holding PII is not stored.
        await sc.chat(f"the cat wrote to {EMAIL}", temperature=0)
        pii = await sc.chat(f"the cat wrote to {EMAIL}", temperature=0, seed=9)
        assert pii.headers["x-clawdbot-target"] == "local"
        # A re-ask (the very same request) wants a new answer, not the stored one.
        reasked = await sc.chat("is the cat on the mat", temperature=0, seed=9)
        assert reasked.headers["x-clawdbot-target"] == "local"
        text = await sc.metrics()
        assert metric(text, 'clawdbot_sidecar_cache_requests_total{result="semantic-hit"}') == 1


async def test_semantic_router_without_numpy_keeps_the_keyword_score(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sidecar image installs numpy only with the `semantic` extra: without it the router
    stays off (not ready, tried again later) and the embedder is never called."""
    monkeypatch.setitem(sys.modules, "clawdbot_sidecar.routing.semantic_model", None)
    calls: list[list[str]] = []

    async def embed(model: str, prompts: list[str]) -> list[list[float]]:
        calls.append(prompts)
        return [[1.0, 0.0] for _ in prompts]

    state = SemanticState("enc", [Example("hi", True), Example("long essay", False)])
    state.start(embed)
    assert state._task is not None
    await state._task
    assert not state.ready and calls == []
    state.start(embed)  # within the retry delay: not tried again at once
    assert state._task.done()


async def test_the_semantic_cache_never_answers_a_request_with_an_image_or_a_file(
    local_url: str, encoder_url: str, cloud: str, serve_front: Any
) -> None:
    """Two CT slices with the same question: the second is not answered with the first's."""
    import base64  # noqa: PLC0415

    from clawdbot_testing.dicom import planted_file  # noqa: PLC0415

    spec = policy(
        cloud,
        rules=[],
        defaultTarget="cloud",
        localModels=[{"name": "tiny-chat"}, {"name": "tiny-bert"}],
        dicom={},
        quality={"semantic": {"embeddingModel": "tiny-bert", "cache": {"enabled": True}}},
    )
    async with semantic_core(spec, local_url, encoder_url) as core, serve_front(core) as url:
        sc = Sidecar(url, core)
        for study in ("1.2.826.0.1.3680043.10.999.40", "1.2.826.0.1.3680043.10.999.41"):
            data = base64.b64encode(planted_file(study_uid=study).data).decode()
            part = {
                "type": "file",
                "file": {"file_data": f"data:application/dicom;base64,{data}"},
            }
            reply = await sc.client.chat.completions.with_raw_response.create(
                model="tiny-chat", max_tokens=8, temperature=0,
                messages=[{"role": "user", "content": [
                    {"type": "text", "text": "is there a lesion"}, part]}],
            )  # fmt: skip
            assert reply.headers["x-clawdbot-target"] == "cloud"
        assert "semantic-hit" not in await sc.metrics()
