"""Translated answers of every shape, read by the real SDKs: text with parallel tool calls,
streamed and not, and a stream that breaks off.

The upstream is a loopback chat completions server written here (an outside cloud's
stand-in), so the answer's shape is whatever the test needs; the apps are the real
``openai`` (Responses) and ``anthropic`` (Messages) clients, whose stream accumulators
check the event order and identities the sidecar writes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web
from sidecar_support import StartSidecar, policy

from clawdbot_api.openai_wire import SSE_DONE, sse_event
from tests.support.servers import serve_app

CALLS = [("call_a", "get_weather", '{"city": "Lyon"}'), ("call_b", "get_time", '{"tz": "CET"}')]
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return sse_event({"id": "c1", "object": "chat.completion.chunk", "model": "up-1",
                      "choices": choices, **extra})  # fmt: skip


def streamed(broken: bool) -> list[bytes]:
    out = [chunk({"role": "assistant", "content": "Checking"}), chunk({"content": " both."})]
    for i, (call_id, name, args) in enumerate(CALLS):
        opening = {"index": i, "id": call_id, "type": "function",
                   "function": {"name": name, "arguments": ""}}  # fmt: skip
        out.append(chunk({"tool_calls": [opening]}))
        for j in range(0, len(args), 5):
            piece = {"index": i, "function": {"arguments": args[j : j + 5]}}
            out.append(chunk({"tool_calls": [piece]}))
    if broken:
        return out[:5]
    return [*out, chunk({}, "tool_calls"), chunk(None, usage=USAGE), SSE_DONE]


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A chat completions server answering text and two tool calls (``/broken/v1``: a
    stream that stops mid-way, its connection dropped)."""

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        broken = request.path.startswith("/broken")
        if not body.get("stream"):
            calls = [{"id": c, "type": "function", "function": {"name": n, "arguments": a}}
                     for c, n, a in CALLS]  # fmt: skip
            message = {"role": "assistant", "content": "Checking both.", "tool_calls": calls}
            return web.json_response({"id": "c1", "object": "chat.completion", "model": "up-1",
                                      "choices": [{"index": 0, "message": message,
                                                   "finish_reason": "tool_calls"}],
                                      "usage": USAGE})  # fmt: skip
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in streamed(broken):
            await resp.write(piece)
        if broken:
            assert request.transport is not None
            request.transport.close()  # mid-stream, as a crashed upstream would
            return resp
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/broken/v1/chat/completions", completions)
    async with serve_app(app) as url:
        yield url


async def sidecar_to(make_sidecar: StartSidecar, url: str) -> str:
    spec = policy(url, rules=[], defaultTarget="cloud", fallback={"cloudToLocal": False})
    spec["cloud"]["baseURL"] = url
    return (await make_sidecar(spec, [])).url


@pytest.mark.parametrize("stream", [False, True])
async def test_text_and_parallel_tool_calls_as_a_response(
    upstream: str, make_sidecar: StartSidecar, stream: bool
) -> None:
    base = await sidecar_to(make_sidecar, f"{upstream}/v1")
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0) as client:
        if stream:
            async with client.responses.stream(model="m", input="weather and time?") as s:
                kinds = [e.type async for e in s]
                response = await s.get_final_response()
            assert kinds.count("response.output_item.added") == 3
            assert kinds.count("response.function_call_arguments.done") == 2
        else:
            response = await client.responses.create(model="m", input="weather and time?")
    message, *calls = response.output
    assert message.type == "message" and response.output_text == "Checking both."
    assert [(c.type, c.call_id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("function_call", call_id, name, json.loads(args)) for call_id, name, args in CALLS
    ]
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 7)


@pytest.mark.parametrize("stream", [False, True])
async def test_text_and_parallel_tool_calls_as_a_message(
    upstream: str, make_sidecar: StartSidecar, stream: bool
) -> None:
    base = await sidecar_to(make_sidecar, f"{upstream}/v1")
    async with anthropic.AsyncAnthropic(base_url=base, api_key="k", max_retries=0) as client:
        question = [{"role": "user", "content": "weather and time?"}]
        if stream:
            async with client.messages.stream(model="m", max_tokens=50, messages=question) as s:
                message = await s.get_final_message()
        else:
            message = await client.messages.create(model="m", max_tokens=50, messages=question)
    text, *uses = message.content
    assert text.type == "text" and text.text == "Checking both."
    assert [(u.type, u.id, u.name, u.input) for u in uses] == [
        ("tool_use", call_id, name, json.loads(args)) for call_id, name, args in CALLS
    ]
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 7)


async def test_a_broken_stream_ends_with_each_apis_error_event(
    upstream: str, make_sidecar: StartSidecar
) -> None:
    base = await sidecar_to(make_sidecar, f"{upstream}/broken/v1")
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0) as client:
        events = [e async for e in await client.responses.create(model="m", input="x",
                                                                  stream=True)]  # fmt: skip
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == "stream_broken"
    async with anthropic.AsyncAnthropic(base_url=base, api_key="k", max_retries=0) as claude:
        with pytest.raises(anthropic.APIStatusError, match="upstream stream broke"):
            async with claude.messages.stream(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            ) as s:
                async for _ in s:
                    pass
