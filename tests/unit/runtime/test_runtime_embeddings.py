"""``POST /v1/embeddings`` over the tiny BERT-style encoder, driven by the official ``openai``
client against a real server on loopback; every vector is checked against one computed here
with onnxruntime and numpy."""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import onnxruntime as ort
import openai
import pytest
from runtime_support import (
    StartServer,
    encoder_reference,
    gate_model,
    wait_for,
    write_linear,
)
from tokenizers import Tokenizer

from clawdbot_runtime.server import RuntimeServer
from clawdbot_runtime.tensors import Array
from clawdbot_testing.models.tinyembed import CONTEXT, DEMO_EMBED_NAME, HIDDEN
from clawdbot_testing.models.tinylm import DEMO_MODEL_NAME

EMBED = DEMO_EMBED_NAME
TEXTS = [
    "the garden is green after the rain",
    "rain in the garden",
    "the kettle is on",
    "a request that carries private data stays on the cluster",
    "hello",
]


@pytest.fixture
def embed_repo(tmp_path: Path, embed_template: Path, demo_template: Path) -> Path:
    """The encoder, the char-level chat model and the linear tensor model."""
    root = tmp_path / "models"
    shutil.copytree(embed_template, root / EMBED)
    shutil.copytree(demo_template, root / DEMO_MODEL_NAME)
    write_linear(root, "linear", 1)
    return root


@pytest.fixture
async def embed_server(start_server: StartServer, embed_repo: Path) -> RuntimeServer:
    return await start_server(embed_repo)


def openai_client(server: RuntimeServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="not-needed", max_retries=0
    )


@pytest.fixture
async def client(
    embed_server: RuntimeServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[openai.AsyncOpenAI]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with openai_client(embed_server) as client:
        yield client


@pytest.fixture(scope="module")
def tokenizer(embed_template: Path) -> Tokenizer:
    """The encoder's tokenizer as the server uses it: no truncation, no padding."""
    loaded = Tokenizer.from_file(str(embed_template / "1" / "tokenizer.json"))
    loaded.no_truncation()
    loaded.no_padding()
    return loaded


@pytest.fixture(scope="module")
def session(embed_template: Path) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(embed_template / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def ids_of(tokenizer: Tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text).ids)


def vectors(reply: openai.types.CreateEmbeddingResponse) -> Array:
    assert [item.index for item in reply.data] == list(range(len(reply.data)))
    return np.array([item.embedding for item in reply.data], dtype=np.float32)


def per_batch(server: RuntimeServer) -> tuple[float, float]:
    """(runs, requests served by them) of the encoder, from the requests-per-batch histogram."""
    registry = server.metrics.registry
    labels = {"model": EMBED}
    count = registry.get_sample_value("clawdbot_runtime_requests_per_batch_count", labels)
    total = registry.get_sample_value("clawdbot_runtime_requests_per_batch_sum", labels)
    return count or 0.0, total or 0.0


async def test_models_list_the_encoder_with_its_length(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == [DEMO_MODEL_NAME, EMBED]
    card = await client.models.retrieve(EMBED)
    assert card.model_extra is not None and card.model_extra["max_model_len"] == CONTEXT


async def test_one_string_equals_the_reference(
    client: openai.AsyncOpenAI,
    embed_server: RuntimeServer,
    tokenizer: Tokenizer,
    session: ort.InferenceSession,
) -> None:
    reply = await client.embeddings.create(model=EMBED, input=TEXTS[0], encoding_format="float")
    assert reply.object == "list" and reply.model == EMBED
    assert len(reply.data) == 1 and reply.data[0].object == "embedding"
    got = vectors(reply)[0]
    ids = ids_of(tokenizer, TEXTS[0])
    assert ids[0] == tokenizer.token_to_id("[CLS]") and ids[-1] == tokenizer.token_to_id("[SEP]")
    assert got.shape == (HIDDEN,)
    np.testing.assert_allclose(got, encoder_reference(session, ids), atol=1e-5)
    assert float(np.linalg.norm(got)) == pytest.approx(1.0, abs=1e-5)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == len(ids)
    labels = {"model": EMBED}
    registry = embed_server.metrics.registry
    assert registry.get_sample_value("clawdbot_runtime_prompt_tokens_total", labels) == len(ids)


async def test_a_list_keeps_its_order_and_counts_every_token(
    client: openai.AsyncOpenAI, tokenizer: Tokenizer, session: ort.InferenceSession
) -> None:
    reply = await client.embeddings.create(model=EMBED, input=TEXTS, encoding_format="float")
    got = vectors(reply)
    all_ids = [ids_of(tokenizer, text) for text in TEXTS]
    # Inputs of different lengths share a run, padded; each must come out as if alone.
    expected = np.array([encoder_reference(session, ids) for ids in all_ids])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == sum(map(len, all_ids))


async def test_token_ids_embed_like_their_text(
    client: openai.AsyncOpenAI, tokenizer: Tokenizer
) -> None:
    text = await client.embeddings.create(model=EMBED, input=TEXTS[:2], encoding_format="float")
    ids = [ids_of(tokenizer, t) for t in TEXTS[:2]]
    one = await client.embeddings.create(model=EMBED, input=ids[0], encoding_format="float")
    many = await client.embeddings.create(model=EMBED, input=ids, encoding_format="float")
    np.testing.assert_allclose(vectors(one)[0], vectors(text)[0], atol=1e-6)
    np.testing.assert_allclose(vectors(many), vectors(text), atol=1e-6)
    assert one.usage.prompt_tokens == len(ids[0])
    assert many.usage.prompt_tokens == len(ids[0]) + len(ids[1])


async def test_base64_is_little_endian_float32(client: openai.AsyncOpenAI) -> None:
    floats = vectors(
        await client.embeddings.create(model=EMBED, input=TEXTS, encoding_format="float")
    )
    # Asked explicitly, the SDK hands the strings back as they came.
    raw = await client.embeddings.create(model=EMBED, input=TEXTS, encoding_format="base64")
    decoded = np.array(
        [np.frombuffer(base64.b64decode(str(item.embedding)), dtype="<f4") for item in raw.data]
    )
    # JSON floats are written in float32's shortest form, so both carry the same bits.
    np.testing.assert_array_equal(decoded, floats)
    # Left out, the SDK asks for base64 itself and decodes it, as with OpenAI's API.
    default = await client.embeddings.create(model=EMBED, input=TEXTS)
    np.testing.assert_array_equal(vectors(default), floats)


async def test_dimensions_cut_and_renormalise(client: openai.AsyncOpenAI) -> None:
    full = vectors(await client.embeddings.create(model=EMBED, input=TEXTS[0]))[0]
    short = vectors(await client.embeddings.create(model=EMBED, input=TEXTS[0], dimensions=16))[0]
    assert short.shape == (16,)
    np.testing.assert_allclose(short, full[:16] / np.linalg.norm(full[:16]), atol=1e-6)
    same = vectors(await client.embeddings.create(model=EMBED, input=TEXTS[0], dimensions=HIDDEN))[
        0
    ]
    np.testing.assert_array_equal(same, full)


async def test_texts_sharing_words_are_closer_than_unrelated_ones(
    client: openai.AsyncOpenAI,
) -> None:
    texts = [
        "the garden is green after the rain",
        "rain in the garden",  # shares garden and rain with the first
        "the kettle is on and the bread is warm",
        "there is honey and bread on the table",  # shares bread with the third
        "the train leaves at nine in the morning",
        "she read the letter twice",
        "the local model answers short questions",
    ]
    got = vectors(await client.embeddings.create(model=EMBED, input=texts))
    similarity = got @ got.T
    unrelated = [4, 5, 6]
    for anchor, partner in ((0, 1), (2, 3)):
        closest_unrelated = max(similarity[anchor, i] for i in unrelated)
        assert similarity[anchor, partner] > closest_unrelated + 0.2, similarity.round(2)


async def test_concurrent_requests_merge_and_match_solo_runs(
    start_server: StartServer,
    embed_repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    tokenizer: Tokenizer,
    session: ort.InferenceSession,
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = await start_server(embed_repo, max_batch_size=16, max_queue_delay_ms=0)
    async with openai_client(server) as client:
        solo = [
            vectors(await client.embeddings.create(model=EMBED, input=text))[0] for text in TEXTS
        ]
        assert per_batch(server) == (len(TEXTS), len(TEXTS))
        gate = gate_model(server, EMBED, monkeypatch)
        batcher = server.manager.get(EMBED).batcher
        first = asyncio.create_task(client.embeddings.create(model=EMBED, input="held"))
        await asyncio.to_thread(gate.entered.wait, 10)
        queued = [
            asyncio.create_task(client.embeddings.create(model=EMBED, input=text)) for text in TEXTS
        ]
        await wait_for(lambda: batcher.depth == len(TEXTS))
        gate.release.set()
        replies = await asyncio.gather(first, *queued)
    # The held run, then every queued request (five lengths, padded) in one run.
    assert per_batch(server) == (len(TEXTS) + 2, 2 * len(TEXTS) + 1)
    for text, alone, reply in zip(TEXTS, solo, replies[1:], strict=True):
        merged = vectors(reply)[0]
        np.testing.assert_allclose(merged, alone, atol=1e-6)
        np.testing.assert_allclose(
            merged, encoder_reference(session, ids_of(tokenizer, text)), atol=1e-5
        )


async def test_a_large_request_runs_in_batches_of_the_batch_size(
    start_server: StartServer,
    embed_repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    tokenizer: Tokenizer,
    session: ort.InferenceSession,
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = await start_server(embed_repo, max_batch_size=4)
    texts = [f"{TEXTS[i % len(TEXTS)]} {'and the rain ' * (i % 3)}".strip() for i in range(10)]
    async with openai_client(server) as client:
        reply = await client.embeddings.create(model=EMBED, input=texts)
    expected = np.array([encoder_reference(session, ids_of(tokenizer, t)) for t in texts])
    np.testing.assert_allclose(vectors(reply), expected, atol=1e-5)
    registry = server.metrics.registry
    labels = {"model": EMBED}
    assert registry.get_sample_value("clawdbot_runtime_batch_size_count", labels) == 3
    assert registry.get_sample_value("clawdbot_runtime_batch_size_sum", labels) == 10


async def test_a_full_queue_is_a_429(
    start_server: StartServer, embed_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = await start_server(embed_repo, max_queue=1)
    gate = gate_model(server, EMBED, monkeypatch)
    batcher = server.manager.get(EMBED).batcher
    async with openai_client(server) as client:
        running = asyncio.create_task(client.embeddings.create(model=EMBED, input="one"))
        await asyncio.to_thread(gate.entered.wait, 10)
        waiting = asyncio.create_task(client.embeddings.create(model=EMBED, input="two"))
        await wait_for(lambda: batcher.depth == 1)
        with pytest.raises(openai.RateLimitError) as refused:
            await client.embeddings.create(model=EMBED, input="three")
        assert refused.value.code == "rate_limit_exceeded"
        gate.release.set()
        assert all(len(r.data) == 1 for r in await asyncio.gather(running, waiting))


@pytest.mark.parametrize(
    ("payload", "param", "words"),
    [
        ({"input": []}, "input", "non-empty"),
        ({"input": ""}, "input", "input[0] is an empty string"),
        ({"input": ["fine", ""]}, "input", "input[1] is an empty string"),
        ({"input": [[5, 6], []]}, "input", "input[1] is an empty list"),
        ({"input": ["text", 5]}, "input", "mixes kinds"),
        ({"input": [10**6]}, "input", "outside this model's vocabulary"),
        ({"input": ["x"] * 2049}, "input", "at most 2048"),
        ({"input": "rain", "dimensions": HIDDEN + 1}, "dimensions", f"at most {HIDDEN}"),
        ({"input": "rain", "dimensions": 0}, "dimensions", "greater than or equal to 1"),
        ({"input": "rain", "encoding_format": "int8"}, "encoding_format", "float"),
    ],
)
async def test_bad_requests_are_400_naming_the_field(
    client: openai.AsyncOpenAI, payload: dict[str, object], param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.post(
            "/embeddings",
            body={"model": EMBED, **payload},
            cast_to=openai.types.CreateEmbeddingResponse,
        )
    assert refused.value.param == param
    assert words in refused.value.message
    assert isinstance(refused.value.body, dict)
    assert set(refused.value.body) == {"message", "type", "param", "code"}


async def test_inputs_longer_than_the_model_are_context_length_exceeded(
    client: openai.AsyncOpenAI, tokenizer: Tokenizer
) -> None:
    # tokenizer.json says truncate at 128, as sentence-transformers exports do: the server
    # must refuse rather than embed a cut-off text.
    long_text = "the rain " * 70
    assert len(ids_of(tokenizer, long_text)) > CONTEXT
    for value in (long_text, [[5] * (CONTEXT + 1)], ["short", long_text]):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.embeddings.create(model=EMBED, input=value)
        assert refused.value.code == "context_length_exceeded"
        assert f"maximum context length is {CONTEXT} tokens" in refused.value.message
    exact = await client.embeddings.create(model=EMBED, input=[[5] * CONTEXT])
    assert exact.usage.prompt_tokens == CONTEXT


async def test_wrong_kind_of_model_is_a_clear_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as generator:
        await client.embeddings.create(model=DEMO_MODEL_NAME, input="hello")
    assert "text generation model, not an embedding model" in generator.value.message
    with pytest.raises(openai.BadRequestError) as tensors:
        await client.embeddings.create(model="linear", input="hello")
    assert "not an embedding model" in tensors.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        await client.embeddings.create(model="no-such-model", input="hello")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as chat:
        await client.chat.completions.create(
            model=EMBED, messages=[{"role": "user", "content": "hello"}]
        )
    assert "embedding model" in chat.value.message and "/v1/embeddings" in chat.value.message
    with pytest.raises(openai.BadRequestError) as completion:
        await client.completions.create(model=EMBED, prompt="hello")
    assert "/v1/embeddings" in completion.value.message


async def test_the_encoder_still_serves_v2_tensors(
    embed_server: RuntimeServer, tokenizer: Tokenizer, session: ort.InferenceSession
) -> None:
    ids = ids_of(tokenizer, TEXTS[1])
    shape = [1, len(ids)]
    body = {
        "inputs": [
            {"name": "input_ids", "shape": shape, "datatype": "INT64", "data": ids},
            {"name": "attention_mask", "shape": shape, "datatype": "INT64", "data": [1] * len(ids)},
            {"name": "token_type_ids", "shape": shape, "datatype": "INT64", "data": [0] * len(ids)},
        ]
    }
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{embed_server.http_port}") as http,
        http.post(f"/v2/models/{EMBED}/infer", json=body) as response,
    ):
        assert response.status == 200
        output = (await response.json())["outputs"][0]
    assert output["name"] == "last_hidden_state" and output["shape"] == [1, len(ids), HIDDEN]
    hidden = np.array(output["data"], dtype=np.float32).reshape(len(ids), HIDDEN)
    mean = hidden.mean(axis=0)
    np.testing.assert_allclose(
        mean / np.linalg.norm(mean), encoder_reference(session, ids), atol=1e-5
    )
