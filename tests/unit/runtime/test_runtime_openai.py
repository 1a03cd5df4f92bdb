"""The OpenAI-compatible /v1 routes, driven by the official ``openai`` client library."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from clawdbot_runtime.server import RuntimeServer
from clawdbot_testing.models.tinylm import DEMO_MODEL_NAME

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def client(
    server: RuntimeServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[openai.AsyncOpenAI]:
    # Loopback only, whatever proxy the environment names.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="not-needed", max_retries=0
    ) as client:
        yield client


async def test_models_lists_only_text_models(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == [DEMO_MODEL_NAME]
    assert (await client.models.retrieve(DEMO_MODEL_NAME)).owned_by == "clawdbot"


async def test_chat_completion_generates_text(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model=DEMO_MODEL_NAME, messages=HELLO, temperature=0, max_tokens=40
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content  # the model writes lower-case English from its corpus
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len("user: hello\nassistant: ")
    assert reply.usage.completion_tokens >= len(choice.message.content)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_stream_matches_the_whole_response(client: openai.AsyncOpenAI) -> None:
    whole = await client.chat.completions.create(
        model=DEMO_MODEL_NAME, messages=HELLO, temperature=0, max_tokens=60
    )
    stream = await client.chat.completions.create(
        model=DEMO_MODEL_NAME,
        messages=HELLO,
        temperature=0,
        max_tokens=60,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage, roles = [], None, None, []
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert roles == ["assistant"]
    assert len([p for p in pieces if p]) > 1  # really streamed, not one blob
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


async def test_completions_with_stop_and_stream(client: openai.AsyncOpenAI) -> None:
    plain = await client.completions.create(
        model=DEMO_MODEL_NAME, prompt="the weather", max_tokens=30, temperature=0
    )
    text = plain.choices[0].text
    assert plain.choices[0].finish_reason == "length"
    assert plain.usage is not None and plain.usage.completion_tokens == 30
    stop = text.split()[1]  # a word the model is known to write next
    stopped = await client.completions.create(
        model=DEMO_MODEL_NAME, prompt="the weather", max_tokens=30, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stop not in stopped.choices[0].text
    assert text.startswith(stopped.choices[0].text)
    streamed = await client.completions.create(
        model=DEMO_MODEL_NAME, prompt="the weather", max_tokens=30, temperature=0, stream=True
    )
    assert "".join([c.choices[0].text async for c in streamed if c.choices]) == text


async def test_seeded_sampling_repeats(client: openai.AsyncOpenAI) -> None:
    runs = [
        await client.completions.create(
            model=DEMO_MODEL_NAME, prompt="the ", max_tokens=25, temperature=1.0, seed=7, n=2
        )
        for _ in range(2)
    ]
    assert [c.text for c in runs[0].choices] == [c.text for c in runs[1].choices]


async def test_errors_use_the_openai_shape(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert missing.value.code == "model_not_found"
    assert "no-such-model" in missing.value.message
    with pytest.raises(openai.BadRequestError) as too_long:
        await client.completions.create(model=DEMO_MODEL_NAME, prompt="a", max_tokens=100_000)
    assert too_long.value.param == "max_tokens"
    assert isinstance(too_long.value.body, dict)
    assert set(too_long.value.body) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError) as not_text:
        await client.chat.completions.create(model="linear", messages=HELLO)
    assert "not a text generation model" in not_text.value.message
    with pytest.raises(openai.BadRequestError) as bad_temperature:
        await client.chat.completions.create(model=DEMO_MODEL_NAME, messages=HELLO, temperature=5)
    assert bad_temperature.value.param == "temperature"


async def test_generation_counts_tokens_in_metrics(
    client: openai.AsyncOpenAI, server: RuntimeServer
) -> None:
    # ignore_eos: exactly max_tokens, whatever the sampler draws (an early EOS would count 4).
    await client.completions.create(
        model=DEMO_MODEL_NAME, prompt="hi", max_tokens=5, extra_body={"ignore_eos": True}
    )
    labels = {"model": DEMO_MODEL_NAME}
    registry = server.metrics.registry
    assert registry.get_sample_value("clawdbot_runtime_prompt_tokens_total", labels) == 2
    assert registry.get_sample_value("clawdbot_runtime_generated_tokens_total", labels) == 5
    tps = registry.get_sample_value("clawdbot_runtime_generation_tokens_per_second_count", labels)
    assert tps == 1


async def test_raw_stream_is_server_sent_events_ending_in_done(server: RuntimeServer) -> None:
    body = {
        "model": DEMO_MODEL_NAME,
        "prompt": "the ",
        "max_tokens": 5,
        "stream": True,
        "temperature": 0,
    }  # greedy: deterministic, no early EOS
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
        http.post("/v1/completions", json=body) as response,
    ):
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = await response.text()
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] == "length"
