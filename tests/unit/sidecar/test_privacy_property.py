"""The privacy property, end to end: no planted value reaches the cloud in clear.

Requests with sensitive values planted in every field the OpenAI chat, completions and
embeddings APIs define, and the Responses and Anthropic Messages APIs (and in unknown
fields, JSON-escaped tool arguments, metadata keys) go through the real sidecar to the
cloud stand-in, in pseudonymize, mask and block modes,
streaming and not, with the local model up, down and overloaded, under a policy that sends
everything to the cloud and under one that keeps PII local. Whatever the sidecar answers,
the stand-in must never have received a planted value, requests with content the sidecar
can't inspect must never reach it, and in block mode nothing holding a value may.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sidecar_support import Sidecar, StartSidecar, policy

from tests.support.servers import free_port

# Values the fast tier finds wherever they stand (one or more per built-in entity kind).
PLANTED = [
    "Maria Garcia",
    "王小明",
    "1600 Pennsylvania Avenue NW, Washington, DC 20500",
    "DOB: 03/14/1985",
    "MRN 00123456",
    "passport E12345678",
    "member ID: XJH123456789",
    "13812345678",
    "+86 138 1234 5678",
    "jane.doe@example.com",
    "J.Smith+billing@Mail.Example.org",
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "078-05-1120",
    "GB82 WEST 1234 5698 7654 32",
    "+44 20 7946 0958",
    "(212) 555-0199",
    "10.20.30.40",
    "11010519491231002X",
    "sk-proj-Ab3dEfGhIjKlMnOpQrStUv12",
    "AKIAIOSFODNN7EXAMPLE",
]
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def escaped(value: str) -> str:
    """``value`` inside a JSON document whose writer escaped what it could."""
    inner = json.dumps(value)[1:-1]
    for char in "@- ":
        inner = inner.replace(char, f"\\u{ord(char):04x}")
    return f'{{"v": "{inner}"}}'


# Each slot puts a value somewhere in a chat request: (body) -> None, mutating it.
ChatSlot = Callable[[dict[str, Any], str], None]


def _msg(body: dict[str, Any], message: dict[str, Any]) -> None:
    body["messages"].insert(0, message)


CHAT_SLOTS: dict[str, ChatSlot] = {
    "content": lambda b, v: _msg(b, {"role": "user", "content": f"note: {v}."}),
    "text-part": lambda b, v: _msg(b, {"role": "user", "content": [{"type": "text", "text": v}]}),
    "input-text-part": lambda b, v: _msg(
        b, {"role": "user", "content": [{"type": "input_text", "text": f"see {v}"}]}
    ),
    "untyped-part": lambda b, v: _msg(b, {"role": "user", "content": [{"text": v}]}),
    "refusal-part": lambda b, v: _msg(
        b, {"role": "assistant", "content": [{"type": "refusal", "refusal": v}]}
    ),
    "content-object": lambda b, v: _msg(
        b, {"role": "user", "content": {"type": "text", "text": v}}
    ),
    "name": lambda b, v: _msg(b, {"role": "user", "name": v, "content": "hello"}),
    "refusal": lambda b, v: _msg(b, {"role": "assistant", "content": None, "refusal": v}),
    "tool-arguments": lambda b, v: _msg(
        b,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "send", "arguments": escaped(v)}}]},
    ),
    "function-call": lambda b, v: _msg(
        b, {"role": "assistant", "function_call": {"name": "f", "arguments": escaped(v)}}
    ),
    "tool-result": lambda b, v: _msg(
        b, {"role": "tool", "tool_call_id": "call_1", "content": escaped(v)}
    ),
    "user": lambda b, v: b.update(user=v),
    "metadata-value": lambda b, v: b.update(metadata={"ticket": v}),
    "metadata-key": lambda b, v: b.update(metadata={v: "owner"}),
    "tool-description": lambda b, v: b.update(tools=[{"type": "function", "function": {
        "name": "lookup", "description": f"looks up {v}",
        "parameters": {"type": "object", "properties": {"q": {
            "type": "string", "description": v, "enum": [v]}}}}}]),
    "legacy-functions": lambda b, v: b.update(
        functions=[{"name": "f", "description": v, "parameters": {"type": "object"}}]
    ),
    "prediction": lambda b, v: b.update(prediction={"type": "content", "content": v}),
    "response-format": lambda b, v: b.update(response_format={"type": "json_schema",
        "json_schema": {"name": "out", "description": v, "schema": {"type": "object"}}}),
    "stop": lambda b, v: b.update(stop=[v]),
    "user-location": lambda b, v: b.update(web_search_options={"user_location": {
        "type": "approximate", "approximate": {"city": v}}}),
    "unknown-field": lambda b, v: b.update(x_vendor={"deep": [{"note": v}]}),
    "enum-field-misused": lambda b, v: _msg(b, {"role": v, "content": "hi"}),
}  # fmt: skip
PROMPT_SLOTS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "prompt": lambda b, v: b.update(prompt=f"complete: {v}"),
    "prompt-list": lambda b, v: b.update(prompt=["first", v]),
    "suffix": lambda b, v: b.update(suffix=v),
    "user": lambda b, v: b.update(user=v),
    "unknown-field": lambda b, v: b.update(extra={"v": [v]}),
}
INPUT_SLOTS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "input": lambda b, v: b.update(input=v),
    "input-list": lambda b, v: b.update(input=["first", f"then {v}"]),
    "user": lambda b, v: b.update(user=v),
}


def _item(body: dict[str, Any], item: dict[str, Any]) -> None:
    body["input"].insert(0, item)


# The Responses API: its input items, parts, tools, text format and top-level fields.
RESPONSES_SLOTS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "instructions": lambda b, v: b.update(instructions=f"the user is {v}"),
    "message-content": lambda b, v: _item(b, {"role": "user", "content": f"note {v}"}),
    "input-text-part": lambda b, v: _item(b, {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": v}]}),
    "output-text-part": lambda b, v: _item(b, {"type": "message", "role": "assistant",
        "content": [{"type": "output_text", "text": v, "annotations": []}]}),
    "refusal-part": lambda b, v: _item(b, {"role": "assistant", "content": [
        {"type": "refusal", "refusal": v}]}),
    "system-message": lambda b, v: _item(b, {"role": "developer", "content": v}),
    "function-call": lambda b, v: _item(b, {"type": "function_call", "call_id": "call_9",
        "name": "send", "arguments": escaped(v)}),
    "function-call-output": lambda b, v: b["input"].extend([
        {"type": "function_call", "call_id": "call_8", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_8", "output": escaped(v)}]),
    "file-name": lambda b, v: _item(b, {"role": "user", "content": [
        {"type": "input_text", "text": "see file"},
        {"type": "input_file", "filename": f"{v}.pdf", "file_id": "file-1"}]}),
    "tool": lambda b, v: b.update(tools=[{"type": "function", "name": "lookup",
        "description": f"looks up {v}", "parameters": {"type": "object", "properties": {
            "q": {"type": "string", "description": v, "enum": [v]}}}}]),
    "text-format": lambda b, v: b.update(text={"format": {"type": "json_schema",
        "name": "out", "description": v, "schema": {"type": "object", "title": v}}}),
    "metadata": lambda b, v: b.update(metadata={"ticket": v, v: "key"}),
    "user": lambda b, v: b.update(user=v),
    "safety-identifier": lambda b, v: b.update(safety_identifier=v),
    "prompt-cache-key": lambda b, v: b.update(prompt_cache_key=v),
    "unknown-field": lambda b, v: b.update(x_vendor={"deep": [v]}),
}  # fmt: skip


def _turn(body: dict[str, Any], message: dict[str, Any]) -> None:
    body["messages"].insert(0, message)


# The Messages API: system, every block type it translates, tools and top-level fields.
MESSAGES_SLOTS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "system": lambda b, v: b.update(system=f"the user is {v}"),
    "system-blocks": lambda b, v: b.update(system=[{"type": "text", "text": v}]),
    "content": lambda b, v: _turn(b, {"role": "user", "content": f"note {v}"}),
    "text-block": lambda b, v: _turn(b, {"role": "user", "content": [
        {"type": "text", "text": v, "cache_control": {"type": "ephemeral"}}]}),
    "assistant-text": lambda b, v: _turn(b, {"role": "assistant", "content": [
        {"type": "text", "text": v}]}),
    "tool-use": lambda b, v: _turn(b, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "send", "input": {"to": v, v: 1}}]}),
    "tool-result": lambda b, v: b["messages"].extend([
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_2", "name": "f", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": escaped(v)},
            {"type": "text", "text": "go on"}]}]),
    "tool-result-blocks": lambda b, v: b["messages"].extend([
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_3", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3",
            "is_error": True, "content": [{"type": "text", "text": v}]}]}]),
    "text-document": lambda b, v: _turn(b, {"role": "user", "content": [
        {"type": "document", "title": v,
         "source": {"type": "text", "media_type": "text/plain", "data": f"notes: {v}"}}]}),
    "tool": lambda b, v: b.update(tools=[{"name": "lookup", "description": f"finds {v}",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string",
                                                                "description": v}}}}]),
    "metadata-user": lambda b, v: b.update(metadata={"user_id": v}),
    "stop-sequences": lambda b, v: b.update(stop_sequences=[v]),
    "output-format": lambda b, v: b.update(output_config={"format": {"type": "json_schema",
        "schema": {"type": "object", "description": v}}}),
    "unknown-field": lambda b, v: b.update(x_vendor={"deep": [v]}),
}  # fmt: skip
RESPONSES_IMAGE = {"role": "user", "content": [
    {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}  # fmt: skip
MESSAGES_IMAGE = {"role": "user", "content": [{"type": "image", "source": {
    "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One request: its endpoint, body, whether the app streams it, what was planted."""

    path: str
    body: dict[str, Any]
    planted: list[str]
    uninspectable: bool


def _other_api(kind: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The starting body, slots and path of a Responses or Messages request."""
    if kind == "responses":
        body = {"model": "tiny-chat", "input": [{"role": "user", "content": "answer briefly"}]}
        return body, RESPONSES_SLOTS, "responses"
    body = {"model": "tiny-chat", "max_tokens": 16,
            "messages": [{"role": "user", "content": "answer briefly"}]}  # fmt: skip
    return body, MESSAGES_SLOTS, "messages"


@st.composite
def cases(draw: st.DrawFn, kinds: tuple[str, ...] = ("chat", "completions", "embeddings",
                                                     "responses", "messages")) -> Case:  # fmt: skip
    kind = draw(st.sampled_from(kinds))
    slots: dict[str, Callable[[dict[str, Any], str], None]]
    if kind in ("responses", "messages"):
        body, slots, path = _other_api(kind)
    elif kind == "chat":
        body: dict[str, Any] = {"model": "tiny-chat", "messages": [
            {"role": "user", "content": "please answer briefly"}]}  # fmt: skip
        slots, path = CHAT_SLOTS, "chat/completions"
    elif kind == "completions":
        body, slots, path = {"model": "tiny-chat", "prompt": "x"}, PROMPT_SLOTS, "completions"
    else:
        body, slots, path = {"model": "tiny-chat", "input": "x"}, INPUT_SLOTS, "embeddings"
    chosen = draw(st.lists(st.sampled_from(sorted(slots)), min_size=1, max_size=3, unique=True))
    planted = [draw(st.sampled_from(PLANTED)) for _ in chosen]
    for slot, value in zip(chosen, planted, strict=True):
        slots[slot](body, value)
    if kind != "embeddings" and draw(st.booleans()):
        body["stream"] = True
    uninspectable = False
    if kind == "chat" and draw(st.integers(0, 5)) == 0:
        body["messages"].append({"role": "user", "content": [IMAGE]})
        uninspectable = True
    elif kind == "completions" and draw(st.integers(0, 5)) == 0:
        body["prompt"] = [[1, 2, 3], [4]]  # token ids replace the text prompt
        uninspectable = True
    elif kind in ("responses", "messages") and draw(st.integers(0, 5)) == 0:
        image = RESPONSES_IMAGE if kind == "responses" else MESSAGES_IMAGE
        body["input" if kind == "responses" else "messages"].append(image)
        uninspectable = True
    return Case(path, body, planted, uninspectable)


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, keys included, and inside JSON-in-strings too."""
    if isinstance(value, str):
        yield value
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            with contextlib.suppress(ValueError):
                yield from strings(json.loads(stripped))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


@dataclass(frozen=True)
class Setup:
    sidecar: Sidecar
    mode: str
    shape: str
    local: str


@pytest.fixture
async def setups(local_url: str, cloud: str, make_sidecar: StartSidecar) -> list[Setup]:
    out = []
    for shape in ("all-to-cloud", "pii-stays-local"):
        rules = (
            [{"name": "pii-local", "match": {"containsPII": True}, "target": "local"}]
            if shape == "pii-stays-local"
            else []
        )
        for mode in ("pseudonymize", "mask", "block"):
            spec = policy(
                cloud,
                rules=rules,
                defaultTarget="cloud",
                redaction={"mode": mode},
                fallback={"maxLocalQueue": 1},
            )
            spec["cloud"]["embeddingModel"] = "text-embedding-3-small"
            for local in ("up", "down", "overloaded"):
                url = local_url if local != "down" else f"http://127.0.0.1:{free_port()}/v1"
                sc = await make_sidecar(spec, [url])
                if local == "overloaded":
                    sc.core.pool.states[0].in_flight = 5
                out.append(Setup(sc, mode, shape, local))
    return out


async def send(setup: Setup, case: Case) -> int:
    url = f"{setup.sidecar.url}/v1/{case.path}"
    async with aiohttp.ClientSession() as s, s.post(url, json=case.body) as r:
        await r.read()  # a stream to its end
        return r.status


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases(), which=st.integers(0, 17))
async def test_no_planted_value_ever_reaches_the_cloud_in_clear(
    setups: list[Setup], cloud: str, case: Case, which: int
) -> None:
    setup = setups[which]
    async with aiohttp.ClientSession() as s:
        await s.delete(f"{cloud}/_stub/requests")
    status = await send(setup, case)
    assert status < 500 or status in (502, 503), status  # refusals, never a crash
    async with aiohttp.ClientSession() as s, s.get(f"{cloud}/_stub/requests") as r:
        sent = await r.json()
    seen = [text for request in sent for text in strings(request["body"])]
    for value in case.planted:
        leaked = [t for t in seen if value in t or value.lower() in t.lower()]
        assert not leaked, (setup, case.path, value, leaked)
    if case.uninspectable:
        assert sent == [], (setup, case)
    if setup.mode == "block" or setup.shape == "pii-stays-local":
        assert sent == [], (setup, case)


@pytest.fixture
async def native_setups(local_url: str, cloud: str, make_sidecar: StartSidecar) -> list[Setup]:
    """Sidecars whose cloud speaks Responses or Messages itself: the app's own request is
    what leaves, redacted; everything to the cloud, local up or down."""
    out = []
    for api in ("openai-responses", "anthropic-messages"):
        for mode in ("pseudonymize", "mask", "block"):
            spec = policy(cloud, rules=[], defaultTarget="cloud", redaction={"mode": mode})
            spec["cloud"]["api"] = api
            for local in ("up", "down"):
                url = local_url if local == "up" else f"http://127.0.0.1:{free_port()}/v1"
                out.append(Setup(await make_sidecar(spec, [url]), mode, api, local))
    return out


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases(("responses", "messages")), which=st.integers(0, 11))
async def test_no_planted_value_reaches_a_cloud_that_takes_the_api_natively(
    native_setups: list[Setup], cloud: str, case: Case, which: int
) -> None:
    setup = native_setups[which]
    async with aiohttp.ClientSession() as s:
        await s.delete(f"{cloud}/_stub/requests")
    status = await send(setup, case)
    assert status < 500 or status in (502, 503), status
    async with aiohttp.ClientSession() as s, s.get(f"{cloud}/_stub/requests") as r:
        sent = await r.json()
    seen = [text for request in sent for text in strings(request["body"])]
    for value in case.planted:
        leaked = [t for t in seen if value in t or value.lower() in t.lower()]
        assert not leaked, (setup, case.path, value, leaked)
    if case.uninspectable or setup.mode == "block":
        assert sent == [], (setup, case)
    # What went out went natively to a cloud that speaks the case's API, else nowhere.
    native_path = "/v1/responses" if setup.shape == "openai-responses" else "/v1/messages"
    for request in sent:
        assert request["path"] in (native_path, "/v1/chat/completions"), request["path"]
        if request["path"] != "/v1/chat/completions":
            assert request["path"] == f"/v1/{case.path}"
