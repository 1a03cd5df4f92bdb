"""Anthropic's Messages API through the sidecar, with the real ``anthropic`` client.

To the real ONNX runtime (chat completions only: the request is translated), to the cloud
stand-in translated into chat completions, and to the stand-in speaking the Messages API
itself (``cloud.api: anthropic-messages``, the key as ``x-api-key``): JSON and streamed,
with tools, usage, redaction and restoration, errors in Anthropic's shape.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import pytest
from sidecar_support import EMAIL, StartSidecar, policy, received

TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    }
]


def to_cloud(cloud: str, **extra: Any) -> dict[str, Any]:
    return policy(cloud, rules=[], defaultTarget="cloud", **extra)


def native(cloud: str) -> dict[str, Any]:
    spec = to_cloud(cloud)
    spec["cloud"]["api"] = "anthropic-messages"
    return spec


_clients: list[anthropic.AsyncAnthropic] = []


def client_of(url: str) -> anthropic.AsyncAnthropic:
    """The app's client: ANTHROPIC_BASE_URL is the sidecar, without /v1."""
    client = anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _clients:
        await _clients.pop().close()


async def test_the_local_onnx_model_answers_a_messages_request(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    client = client_of(sc.url)
    raw = await client.messages.with_raw_response.create(
        model="tiny-chat", max_tokens=8, system="Be brief.",
        messages=[{"role": "user", "content": "hello there"}],
    )  # fmt: skip
    assert raw.headers["x-clawdbot-target"] == "local"
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    message = await raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "tiny-chat"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0
    assert await received(cloud) == []
    assert 'endpoint="messages",target="local"' in await sc.metrics()


async def test_a_streamed_messages_request_from_the_onnx_model(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    client = client_of(sc.url)
    async with client.messages.stream(
        model="tiny-chat", max_tokens=6, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert pieces and final.content[0].type == "text"
    assert final.content[0].text == "".join(pieces)
    assert final.usage.output_tokens == len(pieces)
    assert final.stop_reason in ("end_turn", "max_tokens")


async def test_tools_survive_the_translation_both_ways(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(to_cloud(cloud), [])
    client = client_of(sc.url)
    question = {"role": "user", "content": "Weather in Lyon?"}
    first = await client.messages.create(
        model="tiny-chat", max_tokens=100, messages=[question], tools=TOOLS,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )  # fmt: skip
    assert first.stop_reason == "tool_use"
    (use,) = first.content
    assert use.type == "tool_use" and use.name == "get_weather"
    assert use.input == {"text": "Weather in Lyon?"}
    body = (await received(cloud))[0]["body"]
    assert body["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": TOOLS[0]["input_schema"]}}  # fmt: skip
    assert (body["tool_choice"], body["parallel_tool_calls"]) == ("required", False)
    assert body["max_tokens"] == 100
    second = await client.messages.create(
        model="tiny-chat", max_tokens=100, tools=TOOLS,
        messages=[question, {"role": "assistant", "content": first.content},
                  {"role": "user", "content": [
                      {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"},
                      {"type": "text", "text": "Thanks!"}]}],
    )  # fmt: skip
    assert second.content[0].type == "text"
    assert second.content[0].text == "Cloud answer. You said: Thanks!"
    messages = (await received(cloud))[1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user"]
    call = messages[1]["tool_calls"][0]
    assert call["id"] == use.id and json.loads(call["function"]["arguments"]) == use.input
    assert messages[2] == {"role": "tool", "tool_call_id": use.id, "content": "sunny"}


async def test_a_streamed_tool_call_arrives_as_input_json_deltas(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(to_cloud(cloud), [])
    client = client_of(sc.url)
    async with client.messages.stream(
        model="tiny-chat", max_tokens=50, tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
    ) as stream:  # fmt: skip
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "input_json" in kinds  # the SDK's event for each input_json_delta
    (use,) = final.content
    assert use.type == "tool_use" and use.input == {"text": "Weather in Oslo?"}
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0


async def test_stop_sequences_sampling_and_the_user_are_translated(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(to_cloud(cloud), [])
    client = client_of(sc.url)
    await client.messages.create(
        model="tiny-chat", max_tokens=20, stop_sequences=["END"],
        metadata={"user_id": "u-42"}, messages=[{"role": "user", "content": "hi"}],
        system=[{"type": "text", "text": "You are terse."}],
        extra_body={"temperature": 0.3, "top_p": 0.8, "top_k": 5},
    )  # fmt: skip
    body = (await received(cloud))[0]["body"]
    assert body["stop"] == ["END"] and body["user"] == "u-42"
    assert (body["temperature"], body["top_p"]) == (0.3, 0.8)
    assert "top_k" not in body  # chat completions has none
    assert body["messages"][0] == {"role": "system", "content": "You are terse."}


async def test_pii_is_redacted_translated_and_restored_streamed(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(to_cloud(cloud), [])
    client = client_of(sc.url)
    async with client.messages.stream(
        model="tiny-chat", max_tokens=50, messages=[{"role": "user", "content": f"mail {EMAIL}"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == f"Cloud answer. You said: mail {EMAIL}"
    sent = json.dumps(await received(cloud))
    assert EMAIL not in sent and "<EMAIL_1>" in sent


async def test_an_anthropic_cloud_gets_the_request_natively_with_its_key_header(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(native(cloud), [])
    client = client_of(sc.url)
    raw = await client.messages.with_raw_response.create(
        model="tiny-chat", max_tokens=50, system=f"The user is {EMAIL}.",
        messages=[{"role": "user", "content": [{"type": "text", "text": f"write {EMAIL}"}]}],
        extra_headers={"anthropic-version": "2023-06-01", "anthropic-beta": "feature-1"},
    )  # fmt: skip
    assert raw.headers["x-clawdbot-target"] == "cloud"
    message = await raw.parse()
    assert message.model == "cloud-stub-1" and message.id.startswith("msg_")
    assert message.content[0].type == "text"
    assert message.content[0].text == f"Cloud answer. You said: write {EMAIL}"
    (sent,) = await received(cloud)
    # The stand-in answered, so it got its key as x-api-key; and the app's API headers.
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["headers"]["anthropic-beta"] == "feature-1"
    assert sent["body"]["model"] == "gpt-4o-mini" and sent["body"]["max_tokens"] == 50
    assert EMAIL not in json.dumps(sent) and "<EMAIL_1>" in sent["body"]["system"]


async def test_a_native_messages_stream_is_restored_tool_calls_too(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(native(cloud), [])
    client = client_of(sc.url)
    async with client.messages.stream(
        model="tiny-chat", max_tokens=50, messages=[{"role": "user", "content": f"hi {EMAIL}"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == f"Cloud answer. You said: hi {EMAIL}"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    async with client.messages.stream(
        model="tiny-chat", max_tokens=50, tools=TOOLS, tool_choice={"type": "any"},
        messages=[{"role": "user", "content": f"forecast for {EMAIL}"}],
    ) as stream:  # fmt: skip
        final = await stream.get_final_message()
    (use,) = final.content
    assert use.type == "tool_use" and use.input == {"text": f"forecast for {EMAIL}"}
    assert EMAIL not in json.dumps(await received(cloud))


async def test_an_anthropic_cloud_is_not_sent_chat_requests(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    spec = native(cloud)
    spec["fallback"] = {"cloudToLocal": False}
    sc = await make_sidecar(spec, [local_url])
    async with aiohttp.ClientSession() as s:
        body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}
        async with s.post(f"{sc.url}/v1/chat/completions", json=body) as r:
            answer = await r.json()
            assert r.status == 503, answer
    assert "Anthropic's Messages API" in answer["error"]["message"]
    assert await received(cloud) == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
          "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
          "mcp_servers": [{"url": "https://x"}]}, "mcp_servers"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "search_result", "source": "s", "title": "t", "content": []}]}]},
         "messages.0.content.0.type"),
    ],
)  # fmt: skip
async def test_errors_come_in_anthropics_shape_naming_the_field(
    cloud: str, make_sidecar: StartSidecar, body: dict[str, Any], fragment: str
) -> None:
    sc = await make_sidecar(to_cloud(cloud), [])
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{sc.url}/v1/messages", json=body, headers={"x-request-id": "r-1"}) as r,
    ):
        answer = await r.json()
        assert r.status == 400 and r.headers["x-request-id"] == "r-1"
    assert answer["type"] == "error"
    assert answer["error"]["type"] == "invalid_request_error"
    assert fragment in answer["error"]["message"]
    client = client_of(sc.url)
    with pytest.raises(anthropic.BadRequestError):
        await client.post("/v1/messages", body=body, cast_to=object)
    assert await received(cloud) == []


async def test_count_tokens_is_answered_in_the_pod(cloud: str, make_sidecar: StartSidecar) -> None:
    sc = await make_sidecar(to_cloud(cloud), [])
    client = client_of(sc.url)
    counted = await client.messages.count_tokens(
        model="tiny-chat", messages=[{"role": "user", "content": "x" * 400}]
    )
    assert 100 <= counted.input_tokens <= 110
    assert await received(cloud) == []


async def test_an_image_block_never_reaches_the_cloud(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(to_cloud(cloud), [local_url])
    client = client_of(sc.url)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}  # fmt: skip
    text = {"type": "text", "text": "what is it?"}
    with pytest.raises(anthropic.BadRequestError):  # the tiny local model takes no image
        await client.messages.create(
            model="tiny-chat", max_tokens=5, messages=[{"role": "user", "content": [image, text]}]
        )
    assert await received(cloud) == []
