"""OpenAI-style log-probabilities from the ONNX runtime: chat, completions, streaming."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import numpy as np
import openai
import pytest

from clawdbot_runtime.generation import log_softmax, token_logprob
from clawdbot_runtime.server import RuntimeServer
from clawdbot_testing.models.tinylm import DEMO_MODEL_NAME

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def client(
    server: RuntimeServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[openai.AsyncOpenAI]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="not-needed", max_retries=0
    ) as client:
        yield client


def test_token_logprob_is_the_log_softmax_with_sorted_alternatives() -> None:
    logits = np.array([2.0, 0.5, 3.0, -1.0], dtype=np.float32)
    entry = token_logprob(logits, 0, 3, lambda i: "abcd"[i])
    wide = logits.astype(np.float64)
    probs = np.exp(wide - wide.max()) / np.exp(wide - wide.max()).sum()
    assert entry.token == "a"
    assert math.isclose(entry.logprob, math.log(probs[0]), rel_tol=1e-9)
    assert [t for t, _ in entry.top] == ["c", "a", "b"]
    assert math.isclose(float(np.exp(log_softmax(logits)).sum()), 1.0)


async def test_chat_logprobs_match_the_greedy_choice(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model=DEMO_MODEL_NAME,
        messages=HELLO,
        temperature=0,
        max_tokens=20,
        logprobs=True,
        top_logprobs=3,
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    # One entry per generated token (the char model: one per character), all <= 0.
    assert "".join(e.token for e in content) == choice.message.content
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # Greedy decoding: the token taken is the most likely one.
        assert entry.top_logprobs[0].token == entry.token
        assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.bytes == list(entry.token.encode())
    plain = await client.chat.completions.create(
        model=DEMO_MODEL_NAME, messages=HELLO, temperature=0, max_tokens=20
    )
    assert plain.choices[0].logprobs is None


async def test_streamed_chat_logprobs_add_up_to_the_whole(client: openai.AsyncOpenAI) -> None:
    args = dict(model=DEMO_MODEL_NAME, messages=HELLO, temperature=0, max_tokens=30)
    whole = await client.chat.completions.create(**args, logprobs=True)  # type: ignore[call-overload]
    stream = await client.chat.completions.create(**args, logprobs=True, stream=True)  # type: ignore[call-overload]
    streamed = []
    async for chunk in stream:
        for c in chunk.choices:
            if c.logprobs is not None and c.logprobs.content:
                streamed.extend(c.logprobs.content)
    expected = whole.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in expected]
    assert [round(e.logprob, 6) for e in streamed] == [round(e.logprob, 6) for e in expected]


async def test_completion_logprobs_in_the_legacy_shape(client: openai.AsyncOpenAI) -> None:
    reply = await client.completions.create(
        model=DEMO_MODEL_NAME, prompt="the ", max_tokens=12, temperature=0, logprobs=2
    )
    lp = reply.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert "".join(lp.tokens) == reply.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs)
    assert all(len(alts) == 2 for alts in lp.top_logprobs)
    assert lp.text_offset is not None and lp.text_offset[0] == 0
    with pytest.raises(openai.BadRequestError) as too_many:
        await client.completions.create(
            model=DEMO_MODEL_NAME, prompt="the ", max_tokens=4, logprobs=9
        )
    assert too_many.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as without:
        await client.chat.completions.create(
            model=DEMO_MODEL_NAME, messages=HELLO, max_tokens=4, top_logprobs=2
        )
    assert without.value.param == "top_logprobs"
