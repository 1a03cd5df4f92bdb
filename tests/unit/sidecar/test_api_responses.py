"""OpenAI's Responses API through the sidecar, with the real ``openai`` client.

To the real ONNX runtime (which serves chat completions only: the request is translated),
to the cloud stand-in translated into chat completions, and to the stand-in speaking the
Responses API itself (``cloud.api: openai-responses``): JSON and streamed, with tools, JSON
mode, usage, redaction and restoration, ``previous_response_id`` and the refusals.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from sidecar_support import EMAIL, StartSidecar, policy, received

TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "lookup_order",
        "description": "Looks an order up by its number",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    }
]


def to_cloud(cloud: str, **extra: Any) -> dict[str, Any]:
    """Everything to the cloud stand-in (no rule), with the overrides given."""
    return policy(cloud, rules=[], defaultTarget="cloud", **extra)


def native(cloud: str, **extra: Any) -> dict[str, Any]:
    spec = to_cloud(cloud, **extra)
    spec["cloud"]["api"] = "openai-responses"
    return spec


def client_of(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


_clients: list[openai.AsyncOpenAI] = []


async def stack_client(url: str) -> openai.AsyncOpenAI:
    """A client for the test, closed after it (see the autouse fixture)."""
    client = client_of(url)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _clients:
        await _clients.pop().close()


async def test_the_local_onnx_model_answers_a_responses_request(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    client = await stack_client(sc.url)
    raw = await client.responses.with_raw_response.create(
        model="tiny-chat", input="hello there", instructions="Be brief.", max_output_tokens=8
    )
    assert raw.headers["x-clawdbot-target"] == "local"
    assert raw.headers["x-clawdbot-reason"] == "rule:short"
    response = raw.parse()
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.model == "tiny-chat"
    assert response.output[0].type == "message"
    assert isinstance(response.output_text, str)
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.input_tokens > 0
    if response.status == "incomplete":  # the tiny model ran into max_output_tokens
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
    assert response.instructions == "Be brief."
    assert await received(cloud) == []
    metrics = await sc.metrics()
    assert (
        'clawdbot_sidecar_requests_total{code="200",endpoint="responses",target="local"} 1.0'
        in metrics
    )


async def test_a_streamed_responses_request_from_the_onnx_model(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    client = await stack_client(sc.url)
    deltas: list[str] = []
    types: list[str] = []
    async with client.responses.stream(
        model="tiny-chat", input=[{"role": "user", "content": "hi"}], max_output_tokens=6
    ) as stream:
        async for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            last = event
    assert types[:2] == ["response.created", "response.in_progress"]
    # Cut short by max_output_tokens, a stream ends with response.incomplete, as OpenAI's.
    assert last.type in ("response.completed", "response.incomplete")
    final = last.response
    for kind in ("response.output_item.added", "response.content_part.added",
                 "response.output_text.done", "response.output_item.done"):  # fmt: skip
        assert kind in types
    assert final.output_text == "".join(deltas) and deltas
    assert final.usage is not None and final.usage.output_tokens == len(deltas)


async def test_tools_survive_the_translation_both_ways(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(to_cloud(cloud), [])
    client = await stack_client(sc.url)
    first = await client.responses.create(
        model="tiny-chat", input="Where is order 1234?", tools=TOOLS, tool_choice="required"
    )
    call = first.output[0]
    assert call.type == "function_call" and call.name == "lookup_order"
    assert json.loads(call.arguments) == {"text": "Where is order 1234?"}
    (sent,) = await received(cloud)
    assert sent["path"] == "/v1/chat/completions"
    body = sent["body"]
    assert body["tools"][0]["function"]["name"] == "lookup_order"
    assert body["tools"][0]["function"]["parameters"]["required"] == ["text"]
    assert body["tool_choice"] == "required"
    # The app answers the call: the model's output and the tool's output go back as input.
    second = await client.responses.create(
        model="tiny-chat",
        input=[
            {"role": "user", "content": "Where is order 1234?"},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "shipped"},
        ],
        tools=TOOLS,
    )
    assert second.output_text == "Cloud answer. You said: Where is order 1234?"
    messages = (await received(cloud))[1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "shipped"}


async def test_streamed_tool_calls_arrive_as_function_call_events(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(to_cloud(cloud), [])
    client = await stack_client(sc.url)
    pieces: list[str] = []
    async with client.responses.stream(
        model="tiny-chat", input="find 42", tools=TOOLS,
        tool_choice={"type": "function", "name": "lookup_order"},
    ) as stream:  # fmt: skip
        async for event in stream:
            if event.type == "response.function_call_arguments.delta":
                pieces.append(event.delta)
        final = await stream.get_final_response()
    assert len(pieces) > 1  # the stand-in streams the arguments in short pieces
    (item,) = final.output
    assert item.type == "function_call" and json.loads(item.arguments) == {"text": "find 42"}
    assert "".join(pieces) == item.arguments
    assert (await received(cloud))[0]["body"]["tool_choice"] == {
        "type": "function", "function": {"name": "lookup_order"}
    }  # fmt: skip


async def test_json_mode_and_sampling_fields_are_translated(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(to_cloud(cloud), [])
    client = await stack_client(sc.url)
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    response = await client.responses.create(
        model="tiny-chat", input="answer in JSON", max_output_tokens=50, temperature=0.2,
        top_p=0.9, metadata={"ticket": "T-1"}, user="u-1",
        text={"format": {"type": "json_schema", "name": "out", "schema": schema}},
    )  # fmt: skip
    assert json.loads(response.output_text) == {"answer": "Cloud answer. You said: answer in JSON"}
    body = (await received(cloud))[0]["body"]
    expected = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}
    assert body["response_format"] == expected
    assert body["max_completion_tokens"] == 50
    assert (body["temperature"], body["top_p"], body["user"]) == (0.2, 0.9, "u-1")
    assert body["metadata"] == {"ticket": "T-1"}
    assert response.usage is not None and response.usage.total_tokens > 0


async def test_pii_is_redacted_on_the_way_out_and_restored_translated_and_streamed(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(to_cloud(cloud), [])
    client = await stack_client(sc.url)
    response = await client.responses.create(model="tiny-chat", input=f"mail {EMAIL} today")
    assert response.output_text == f"Cloud answer. You said: mail {EMAIL} today"
    async with client.responses.stream(model="tiny-chat", input=f"mail {EMAIL}") as stream:
        text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
        final = await stream.get_final_response()
    assert text == final.output_text == f"Cloud answer. You said: mail {EMAIL}"
    sent = json.dumps(await received(cloud))
    assert EMAIL not in sent and "<EMAIL_1>" in sent


async def test_a_responses_cloud_gets_the_request_natively_redacted_and_restored(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(native(cloud), [])
    client = await stack_client(sc.url)
    raw = await client.responses.with_raw_response.create(
        model="tiny-chat", input=[{"role": "user", "content": [
            {"type": "input_text", "text": f"write to {EMAIL}"}]}],
        instructions=f"The user is {EMAIL}.", tools=TOOLS,
    )  # fmt: skip
    assert raw.headers["x-clawdbot-target"] == "cloud"
    response = raw.parse()
    assert response.id.startswith("resp_") and response.model == "cloud-stub-1"
    assert response.output_text == f"Cloud answer. You said: write to {EMAIL}"
    assert response.instructions == f"The user is {EMAIL}."  # restored in the echo too
    (sent,) = await received(cloud)
    assert sent["path"] == "/v1/responses"
    assert sent["body"]["model"] == "gpt-4o-mini"
    assert sent["body"]["tools"] == TOOLS  # as the app sent them, not translated
    assert EMAIL not in json.dumps(sent) and "<EMAIL_1>" in sent["body"]["instructions"]
    metrics = await sc.metrics()
    assert 'endpoint="responses",target="cloud"' in metrics


async def test_a_native_responses_stream_is_restored_and_its_usage_accounted(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(native(cloud), [])
    client = await stack_client(sc.url)
    async with client.responses.stream(model="tiny-chat", input=f"mail {EMAIL}") as stream:
        events = [e async for e in stream]
        final = await stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == f"Cloud answer. You said: mail {EMAIL}"
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    metrics = await sc.metrics()
    assert 'clawdbot_sidecar_tokens_total{kind="completion",target="cloud"}' in metrics
    assert EMAIL not in json.dumps(await received(cloud))


async def test_a_native_function_call_streams_through(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(native(cloud), [])
    client = await stack_client(sc.url)
    async with client.responses.stream(
        model="tiny-chat", input="find 7", tools=TOOLS, tool_choice="required"
    ) as stream:
        final = await stream.get_final_response()
    (item,) = final.output
    assert item.type == "function_call" and json.loads(item.arguments) == {"text": "find 7"}


async def test_previous_response_id_needs_the_store_the_policy_enables(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(policy(cloud), [local_url])
    client = await stack_client(sc.url)
    first = await client.responses.create(model="tiny-chat", input="hi", max_output_tokens=4)
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(
            model="tiny-chat", input="and then?", previous_response_id=first.id
        )
    assert err.value.param == "previous_response_id"
    assert "spec.responsesStore.enabled" in err.value.message


async def test_previous_response_id_continues_a_stored_conversation(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(to_cloud(cloud, responsesStore={"enabled": True, "maxEntries": 2}), [])
    client = await stack_client(sc.url)
    first = await client.responses.create(model="tiny-chat", input="my colour is green",
                                          instructions="Only for the first turn.")  # fmt: skip
    second = await client.responses.create(
        model="tiny-chat", input="what is my colour?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    messages = (await received(cloud))[1]["body"]["messages"]
    # The first turn's input and output come back; its instructions don't (as OpenAI does).
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "my colour is green"),
        ("assistant", first.output_text),
        ("user", "what is my colour?"),
    ]
    # A streamed turn is stored too, and the store keeps only maxEntries responses.
    async with client.responses.stream(
        model="tiny-chat", input="again", previous_response_id=second.id
    ) as stream:
        third = await stream.get_final_response()
    await client.responses.create(model="tiny-chat", input="x", previous_response_id=third.id)
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(model="tiny-chat", input="x", previous_response_id=first.id)
    assert err.value.code == "previous_response_not_found"
    # store: false keeps nothing.
    unstored = await client.responses.create(model="tiny-chat", input="y", store=False)
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model="tiny-chat", input="z",
                                      previous_response_id=unstored.id)  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image",
                                                  "file_id": "file-1"}]}]},
         "input[0].content[0].image_url"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"x_vendor": 1}, "x_vendor"),
        ({"text": {"format": {"type": "grammar"}}}, "text.format.type"),
    ],
)  # fmt: skip
async def test_what_cannot_be_translated_is_refused_naming_the_field(
    cloud: str, make_sidecar: StartSidecar, extra: dict[str, Any], param: str
) -> None:
    sc = await make_sidecar(to_cloud(cloud), [])
    client = await stack_client(sc.url)
    body = {"model": "tiny-chat", "input": "hi", **extra}
    with pytest.raises(openai.BadRequestError) as err:
        await client.post("/responses", body=body, cast_to=object)
    assert err.value.param == param, err.value.message
    assert await received(cloud) == []


async def test_images_in_a_responses_request_stay_local(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    """An input_image can't be inspected: with redaction on, the cloud never gets it."""
    sc = await make_sidecar(to_cloud(cloud), [local_url])
    client = await stack_client(sc.url)
    with pytest.raises(openai.BadRequestError) as err:  # the tiny model takes no image
        image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
        text = {"type": "input_text", "text": "what is this?"}
        await client.responses.create(
            model="tiny-chat", input=[{"role": "user", "content": [text, image]}]
        )
    assert "text content" in err.value.message
    assert await received(cloud) == []


async def test_the_cache_and_the_audit_record_see_the_responses_api(
    cloud: str, make_sidecar: StartSidecar, tmp_path: Any
) -> None:
    audit_path = tmp_path / "audit.jsonl"
    sc = await make_sidecar(
        to_cloud(cloud, cache={"enabled": True},
                 audit={"enabled": True, "sink": "file", "path": str(audit_path)}), []
    )  # fmt: skip
    client = await stack_client(sc.url)
    first = await client.responses.with_raw_response.create(model="tiny-chat", input="cache me")
    again = await client.responses.with_raw_response.create(model="tiny-chat", input="cache me")
    assert first.headers["x-clawdbot-target"] == "cloud"
    assert again.headers["x-clawdbot-target"] == "cache"
    assert again.parse().output_text == first.parse().output_text
    assert again.parse().id != first.parse().id  # a new response, from the cached answer
    assert len(await received(cloud)) == 1
    await sc.core.close()  # flush the audit log
    records = [json.loads(line) for line in audit_path.read_text().splitlines()]
    decisions = [r for r in records if r.get("kind") == "decision"]
    assert [(r["endpoint"], r["target"]) for r in decisions] == [
        ("responses", "cloud"), ("responses", "cache")]  # fmt: skip
