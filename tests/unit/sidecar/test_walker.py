"""The one walk over a request: every string that can leave is visited, nothing else is."""

from __future__ import annotations

import json
from typing import Any

import pytest

from clawdbot_sidecar.redaction import RedactionConfig, Redactor
from clawdbot_sidecar.redaction.walker import Uninspectable, inspect_request, rewrite

EMAIL = "jane.doe@example.com"


def visited(body: dict[str, Any]) -> list[str]:
    return inspect_request(body).texts


def test_every_text_bearing_field_of_a_chat_request_is_visited() -> None:
    body = {
        "model": "gpt-4o",
        "user": "u-1",
        "metadata": {"ticket": "t-1", "owner-key": "v"},
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "name": "nm", "content": [
                {"type": "text", "text": "a"},
                {"type": "input_text", "text": "b"},
                {"text": "c"},  # no type
                {"type": "refusal", "refusal": "d"},
            ]},
            {"role": "user", "content": {"type": "text", "text": "e"}},  # an object, not a list
            {"role": "assistant", "content": None, "refusal": "f", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": '{"q": "g"}'}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "h"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "lookup", "description": "i",
            "parameters": {"type": "object", "properties": {"q": {"type": "string",
                           "description": "j"}}},
        }}],
        "prediction": {"type": "content", "content": "k"},
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "description": "l",
                            "schema": {"type": "object"}}},
        "stop": ["m"],
        "web_search_options": {"user_location": {"type": "approximate",
                               "approximate": {"city": "o"}}},
        "x-vendor": {"deep": [{"note": "p"}]},  # an unknown field: visited like any other
        "temperature": 0.2,
    }  # fmt: skip
    texts = visited(body)
    for expected in [
        "u-1", "t-1", "owner-key", "v", "sys", "nm", "a", "b", "c", "d", "e", "f", "g",
        "h", "i", "j", "k", "l", "m", "o", "p", "call_1", "lookup", "n", "note",
    ]:  # fmt: skip
        assert expected in texts, expected
    # Enumerated values in their own fields, the model and the API's field names are not.
    for skipped in ["gpt-4o", "system", "user", "assistant", "function", "object", "string"]:
        assert skipped not in texts, skipped
    assert "messages" not in texts and "content" not in texts


def test_enum_fields_holding_anything_else_are_visited() -> None:
    body = {"model": "m", "messages": [{"role": EMAIL, "content": "x", "type": EMAIL}]}
    assert visited(body).count(EMAIL) == 2


def test_completions_and_embeddings_fields() -> None:
    assert visited({"model": "m", "prompt": "p", "suffix": "s", "user": "u"}) == ["p", "s", "u"]
    assert visited({"model": "m", "input": ["a", "b"], "encoding_format": "float"}) == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "kinds"),
    [
        ({"model": "m", "prompt": [1, 2, 3]}, {Uninspectable.TOKEN_IDS}),
        ({"model": "m", "input": [[1, 2], [3]]}, {Uninspectable.TOKEN_IDS}),
        ({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
         {Uninspectable.IMAGE}),
        ({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
         {Uninspectable.AUDIO}),
        ({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "file", "file": {"file_id": "file-1"}}]}]}, {Uninspectable.FILE}),
        ({"model": "m", "messages": [{"role": "user", "content": "plain"}]}, set()),
        ({"model": "m", "prompt": ["text", "more"]}, set()),
    ],
)  # fmt: skip
def test_uninspectable_content_is_reported(body: dict[str, Any], kinds: set[Any]) -> None:
    assert inspect_request(body).uninspectable == kinds


def test_binary_payloads_are_not_visited_but_their_names_and_urls_are() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUFBQQ=="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/scan.png"}},
        {"type": "file", "file": {"file_data": "JVBERi0=", "filename": "report.pdf"}},
    ]}]}  # fmt: skip
    texts = visited(body)
    assert texts == ["https://example.com/scan.png", "report.pdf"]


def test_json_inside_strings_is_decoded_so_escapes_cannot_hide_a_value() -> None:
    escaped = json.dumps({"to": EMAIL}, ensure_ascii=True).replace("@", "\\u0040")
    assert "@" not in escaped
    body = {"model": "m", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
         "function": {"name": "send", "arguments": escaped}}]},
        {"role": "tool", "tool_call_id": "c", "content": '[{"mail": "x\\u0040y.io"}]'},
    ]}  # fmt: skip
    texts = visited(body)
    assert EMAIL in texts and "x@y.io" in texts
    redacted = Redactor(RedactionConfig()).redact_request(body).request
    args = redacted["messages"][0]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(args) == {"to": "<EMAIL_1>"}
    assert json.loads(redacted["messages"][1]["content"]) == [{"mail": "<EMAIL_2>"}]


def test_unchanged_json_strings_keep_their_exact_text() -> None:
    raw = '{ "q" :  "nothing here" }'
    body = {"model": "m", "messages": [{"role": "tool", "tool_call_id": "c", "content": raw}]}
    assert rewrite(body, lambda t: t) is not body
    assert rewrite(body, lambda t: t)["messages"][0]["content"] == raw


def test_rewrite_shares_what_it_does_not_change() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {"model": "m", "tools": tools, "messages": [{"role": "user", "content": EMAIL}]}
    out = rewrite(body, lambda t: "X" if t == EMAIL else t)
    assert out["messages"][0]["content"] == "X"
    assert out["tools"] is tools
    assert body["messages"][0]["content"] == EMAIL  # the original is left as it was


def test_keys_of_free_form_objects_are_rewritten_too() -> None:
    body = {"model": "m", "metadata": {EMAIL: "owner"}, "messages": []}
    out = Redactor(RedactionConfig()).redact_request(body).request
    assert list(out["metadata"]) == ["<EMAIL_1>"]
