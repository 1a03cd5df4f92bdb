"""The privacy property, end to end: no planted value reaches the cloud in clear.

Requests with sensitive values planted in every field the OpenAI chat, completions and
embeddings APIs define (and in unknown fields, JSON-escaped tool arguments, metadata keys)
go through the real sidecar to the cloud stand-in, in pseudonymize, mask and block modes,
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


@dataclass(frozen=True)
class Case:
    """One request: its endpoint, body, whether the app streams it, what was planted."""

    path: str
    body: dict[str, Any]
    planted: list[str]
    uninspectable: bool


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["chat", "completions", "embeddings"]))
    slots: dict[str, Callable[[dict[str, Any], str], None]]
    if kind == "chat":
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
