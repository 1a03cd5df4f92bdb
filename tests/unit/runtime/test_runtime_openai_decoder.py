"""The /v1 routes over a decoder with a KV cache (the Optimum contract), driven by the
official ``openai`` client against a real server on loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import openai
import pytest
from runtime_support import (
    StartServer,
    decoder_session,
    gate_model,
    greedy_without_cache,
    wait_for,
)

from clawdbot_runtime.hf_text import HfTokenizer
from clawdbot_runtime.server import RuntimeServer
from clawdbot_runtime.tensors import Array
from clawdbot_testing.models.tinygpt import DEMO_GPT_NAME, EOS_TOKEN, build_tiny_gpt

GPT = DEMO_GPT_NAME
PLAIN = "tiny-gpt-plain"  # no chat template: the ChatML fallback
STRICT = "tiny-gpt-strict"  # a template that refuses system messages
NO_PAST = "tiny-gpt-nopast"  # exported without the cache: refused at load
HELLO = [{"role": "user", "content": "is my data safe?"}]


def _set_template(folder: Path, template: str | None) -> None:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if template is None:
        del config["chat_template"]
    else:
        config["chat_template"] = template
    path.write_text(json.dumps(config))


@pytest.fixture
def gpt_repo(tmp_path: Path, gpt_template: Path) -> Path:
    root = tmp_path / "models"
    for name in (GPT, PLAIN, STRICT):
        shutil.copytree(gpt_template, root / name)
    _set_template(root / PLAIN / "1", None)
    _set_template(
        root / STRICT / "1",
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ '<|' + m['role'] + '|>' + m['content'] }}{% endfor %}<|assistant|>",
    )
    build_tiny_gpt(root, name=NO_PAST, with_past=False)
    return root


@pytest.fixture
async def gpt_server(start_server: StartServer, gpt_repo: Path) -> RuntimeServer:
    return await start_server(gpt_repo)


@pytest.fixture
async def client(
    gpt_server: RuntimeServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[openai.AsyncOpenAI]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{gpt_server.http_port}/v1",
        api_key="not-needed",
        max_retries=0,
    ) as client:
        yield client


@pytest.fixture(scope="module")
def tokenizer(gpt_template: Path) -> HfTokenizer:
    return HfTokenizer(gpt_template / "1")


def reference(gpt_template: Path, prompt_ids: list[int], steps: int) -> list[int]:
    """Greedy tokens recomputing the whole sequence each step (no cache), EOS included."""
    session = decoder_session(gpt_template / "1")
    tokens, _ = greedy_without_cache(session, prompt_ids, steps, 0, (2, 2, 16))
    return tokens


async def test_models_list_the_servable_decoders(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert sorted(m.id for m in models.data) == [GPT, PLAIN, STRICT]
    card = await client.models.retrieve(GPT)
    assert card.owned_by == "clawdbot"
    assert card.model_extra is not None and card.model_extra["max_model_len"] == 256


@pytest.mark.parametrize("prompt", ["the kettle is", "a request that", ""])
async def test_completion_equals_recomputing_without_cache(
    client: openai.AsyncOpenAI, tokenizer: HfTokenizer, gpt_template: Path, prompt: str
) -> None:
    ids = tokenizer.encode(prompt, add_special_tokens=True) or [0]  # "" starts from BOS
    expected = reference(gpt_template, ids, 30)
    reply = await client.completions.create(model=GPT, prompt=prompt, max_tokens=30, temperature=0)
    choice = reply.choices[0]
    ended = expected[-1] == 0
    assert choice.text == tokenizer.decode(expected[:-1] if ended else expected)
    assert choice.finish_reason == ("stop" if ended else "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.usage.completion_tokens == len(expected)
    assert reply.usage.total_tokens == len(ids) + len(expected)


async def test_chat_stream_matches_the_whole_response(
    client: openai.AsyncOpenAI, tokenizer: HfTokenizer
) -> None:
    whole = await client.chat.completions.create(
        model=GPT, messages=HELLO, temperature=0, max_tokens=40
    )
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content
    prompt = f"{EOS_TOKEN}<|user|>is my data safe?<|assistant|>"
    assert whole.usage is not None
    assert whole.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))
    stream = await client.chat.completions.create(
        model=GPT,
        messages=HELLO,
        temperature=0,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, roles, finish, usage = [], [], None, None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert roles == ["assistant"]
    assert len([p for p in pieces if p]) > 1  # streamed token by token, not one blob
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


async def test_stop_sequences_and_max_tokens(client: openai.AsyncOpenAI) -> None:
    prompt = "the kettle is"
    plain = await client.completions.create(model=GPT, prompt=prompt, max_tokens=30, temperature=0)
    text = plain.choices[0].text
    stop = text.split()[1]  # a word the model is known to write
    stopped = await client.completions.create(
        model=GPT, prompt=prompt, max_tokens=30, temperature=0, stop=[stop, "zzz"]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(stop)]
    streamed = await client.completions.create(
        model=GPT, prompt=prompt, max_tokens=30, temperature=0, stop=stop, stream=True
    )
    assert "".join([c.choices[0].text async for c in streamed if c.choices]) == (
        stopped.choices[0].text
    )
    short = await client.completions.create(model=GPT, prompt=prompt, max_tokens=2, temperature=0)
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 2
    assert text.startswith(short.choices[0].text)
    # "a request that" ends with end-of-text after a few tokens; ignore_eos (vLLM's
    # extension) generates the full budget instead.
    ended = await client.completions.create(
        model=GPT, prompt="a request that", max_tokens=20, temperature=0
    )
    assert ended.choices[0].finish_reason == "stop"
    assert ended.usage is not None and ended.usage.completion_tokens < 20
    forced = await client.completions.create(
        model=GPT,
        prompt="a request that",
        max_tokens=20,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert forced.choices[0].finish_reason == "length"
    assert forced.usage is not None and forced.usage.completion_tokens == 20
    assert forced.choices[0].text.startswith(ended.choices[0].text)


async def test_sampling_is_seeded_and_top_p_narrows_it(client: openai.AsyncOpenAI) -> None:
    async def sampled(seed: int, top_p: float = 0.9) -> list[str]:
        reply = await client.completions.create(
            model=GPT, prompt="the ", max_tokens=20, temperature=1.0, top_p=top_p, seed=seed, n=2
        )
        return [c.text for c in reply.choices]

    first = await sampled(7)
    assert await sampled(7) == first
    seen = {text for seed in (1, 2, 3) for text in await sampled(seed)}
    assert len(seen) > 1  # the seed really drives the sampler
    greedy = await client.completions.create(model=GPT, prompt="the ", max_tokens=20, temperature=0)
    # A nucleus of one token is greedy decoding, whatever the seed.
    assert await sampled(3, top_p=1e-6) == [greedy.choices[0].text] * 2


async def test_prompt_longer_than_the_context_is_a_400(
    client: openai.AsyncOpenAI, tokenizer: HfTokenizer
) -> None:
    long_text = "the cloud " * 200
    assert len(tokenizer.encode(long_text, add_special_tokens=True)) > 256
    with pytest.raises(openai.BadRequestError) as too_long:
        await client.completions.create(model=GPT, prompt=long_text, max_tokens=5)
    assert too_long.value.code == "context_length_exceeded"
    assert too_long.value.param == "prompt"
    assert "maximum context length is 256 tokens" in too_long.value.message
    assert isinstance(too_long.value.body, dict)
    assert set(too_long.value.body) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError) as chat_too_long:
        await client.chat.completions.create(
            model=GPT, messages=[{"role": "user", "content": long_text}]
        )
    assert chat_too_long.value.param == "messages"
    assert chat_too_long.value.code == "context_length_exceeded"


async def test_generation_stops_at_the_context_length(
    client: openai.AsyncOpenAI, tokenizer: HfTokenizer
) -> None:
    words = next(
        k
        for k in range(200, 300)
        if len(tokenizer.encode("the" + " the" * k, add_special_tokens=True)) == 255
    )
    reply = await client.completions.create(
        model=GPT, prompt="the" + " the" * words, max_tokens=50, temperature=0
    )
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 255
    assert reply.usage.completion_tokens == 1  # 256 positions in all


async def test_chat_templates_fallback_and_refusal(
    client: openai.AsyncOpenAI, tokenizer: HfTokenizer
) -> None:
    reply = await client.chat.completions.create(
        model=PLAIN, messages=[{"role": "user", "content": "hello"}], max_tokens=3
    )
    chatml = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(tokenizer.encode(chatml, add_special_tokens=False))
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model=STRICT, messages=[{"role": "system", "content": "be brief"}, *HELLO]
        )
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["message"] == (
        "the model's chat template rejected the messages: System role not supported"
    )
    assert refused.value.param == "messages"
    ok = await client.chat.completions.create(model=STRICT, messages=HELLO, max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")


async def test_a_graph_without_the_cache_is_unavailable_with_the_reason(
    client: openai.AsyncOpenAI, gpt_server: RuntimeServer
) -> None:
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{gpt_server.http_port}") as http,
        http.post("/v2/repository/index") as response,
    ):
        index = {row["name"]: row for row in await response.json()}
    assert index[NO_PAST]["state"] == "UNAVAILABLE"
    assert "no input 'past_key_values.0.key'" in index[NO_PAST]["reason"]
    assert index[GPT]["state"] == "READY"
    with pytest.raises(openai.InternalServerError) as unavailable:
        await client.completions.create(model=NO_PAST, prompt="the", max_tokens=2)
    assert unavailable.value.status_code == 503
    assert "past_key_values.0.key" in unavailable.value.message


async def test_generation_metrics(client: openai.AsyncOpenAI, gpt_server: RuntimeServer) -> None:
    reply = await client.completions.create(
        model=GPT, prompt="the kettle is", max_tokens=4, temperature=0
    )
    assert reply.usage is not None
    labels = {"model": GPT}
    registry = gpt_server.metrics.registry

    def sample(name: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("clawdbot_runtime_prompt_tokens_total") == reply.usage.prompt_tokens
    assert sample("clawdbot_runtime_generated_tokens_total") == reply.usage.completion_tokens
    assert sample("clawdbot_runtime_generation_tokens_per_second_count") == 1
    assert sample("clawdbot_runtime_time_to_first_token_seconds_count") == 1
    # One prefill and one step per further token, each an onnxruntime run.
    runs = sample("clawdbot_runtime_compute_duration_seconds_count")
    assert runs is not None and runs >= reply.usage.completion_tokens


async def test_concurrent_generations_share_runs(
    client: openai.AsyncOpenAI, gpt_server: RuntimeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt = "a request that"
    solo = await client.completions.create(model=GPT, prompt=prompt, max_tokens=8, temperature=0)
    registry, labels = gpt_server.metrics.registry, {"model": GPT}

    def merged_requests() -> float:
        total = registry.get_sample_value("clawdbot_runtime_requests_per_batch_sum", labels)
        count = registry.get_sample_value("clawdbot_runtime_requests_per_batch_count", labels)
        return (total or 0) - (count or 0)

    before = merged_requests()
    served = gpt_server.manager.get(GPT)
    gate = gate_model(gpt_server, GPT, monkeypatch)
    # One generation holds the model in a run while two more queue their prefills.
    holder = asyncio.create_task(
        client.completions.create(model=GPT, prompt="the", max_tokens=1, temperature=0)
    )
    await wait_for(gate.entered.is_set)
    pair = [
        asyncio.create_task(
            client.completions.create(model=GPT, prompt=prompt, max_tokens=8, temperature=0)
        )
        for _ in range(2)
    ]
    await wait_for(lambda: served.batcher.depth == 2)
    gate.release.set()
    replies = await asyncio.gather(*pair)
    await holder
    # Same prompt length -> same shapes: the prefills (and then the steps) ran as one batch,
    # and each row came back exactly as it does alone.
    assert merged_requests() > before
    assert [r.choices[0].text for r in replies] == [solo.choices[0].text] * 2


def _batch_rows(server: RuntimeServer) -> tuple[float, float]:
    registry, labels = server.metrics.registry, {"model": GPT}
    total = registry.get_sample_value("clawdbot_runtime_batch_size_sum", labels) or 0
    count = registry.get_sample_value("clawdbot_runtime_batch_size_count", labels) or 0
    return total, count


async def test_steps_at_different_cache_lengths_merge_into_one_run(
    gpt_server: RuntimeServer, tokenizer: HfTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = gpt_server.manager.get(GPT)
    assert served.model.decoder is not None
    spec, model = served.model.decoder.spec, served.model

    def next_step(text: str) -> dict[str, Array]:
        """The feeds of a sequence's next decode step: its cache and its last token."""
        ids = tokenizer.encode(text, add_special_tokens=True)
        prefill = model.run(spec.feeds(ids[:-1], spec.empty_past(), 0), spec.output_names)
        past = [prefill[name] for name in spec.present_names]
        return spec.feeds(ids[-1:], past, len(ids) - 1)

    steps = [next_step("the kettle is on"), next_step("a request that carries private data")]
    lengths = [s["attention_mask"].shape[1] for s in steps]
    assert lengths[0] < lengths[1]
    alone = [model.run(step, spec.output_names) for step in steps]
    gate = gate_model(gpt_server, GPT, monkeypatch)
    holder = asyncio.create_task(served.batcher.submit(steps[0], spec.output_names))
    await wait_for(gate.entered.is_set)
    pending = [
        asyncio.create_task(served.batcher.submit(step, spec.output_names)) for step in steps
    ]
    await wait_for(lambda: served.batcher.depth == 2)
    rows_before, runs_before = _batch_rows(gpt_server)
    gate.release.set()
    merged = await asyncio.gather(*pending)
    await holder
    rows, runs = _batch_rows(gpt_server)
    # The held run (1 row, recorded when it ends) and one run carrying both steps.
    assert (rows - rows_before, runs - runs_before) == (3, 2)
    for got, want, length in zip(merged, alone, lengths, strict=True):
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)
        for name in spec.present_names:
            assert got[name].shape == (1, spec.kv_heads, length, spec.head_dim)
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


async def test_generations_of_different_lengths_batch_and_match_solo(
    start_server: StartServer, gpt_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A queue delay lets the steps of concurrent generations find each other.
    server = await start_server(gpt_repo, max_queue_delay_ms=50)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    prompts = ["the kettle is", "a request that carries private data stays", "the train"]
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="x", max_retries=0
    ) as client:

        async def complete(prompt: str) -> str:
            reply = await client.completions.create(
                model=GPT, prompt=prompt, max_tokens=12, temperature=0
            )
            return reply.choices[0].text

        solo = [await complete(p) for p in prompts]
        rows_before, runs_before = _batch_rows(server)
        together = await asyncio.gather(*(complete(p) for p in prompts))
        rows, runs = _batch_rows(server)
    assert together == solo
    assert rows - rows_before > runs - runs_before  # some runs carried several generations
