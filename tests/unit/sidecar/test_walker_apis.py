"""The one walk over requests in the Responses and Messages shapes, and restoration in
their answers: every string that would leave is visited, binary payloads are reported, and
placeholders come back in Response and Message objects and their event streams."""

from __future__ import annotations

import json
from typing import Any

from clawdbot_sidecar.redaction import PseudonymMap, Restorer
from clawdbot_sidecar.redaction.native import (
    NativeEventRestorer,
    native_usage,
    restore_document,
)
from clawdbot_sidecar.redaction.walker import Uninspectable, inspect_request, rewrite

B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


def test_every_string_of_a_messages_request_is_visited_and_images_reported() -> None:
    body: dict[str, Any] = {
        "model": "claude", "max_tokens": 10, "system": [{"type": "text", "text": "sys-v"}],
        "metadata": {"user_id": "user-v"}, "stop_sequences": ["stop-v"],
        "tools": [{"name": "tool-v", "description": "desc-v", "input_schema": {
            "type": "object", "properties": {"key-v": {"type": "string",
                                                        "description": "prop-v"}}}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "text-v", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": B64}},
                {"type": "document", "title": "title-v",
                 "source": {"type": "text", "media_type": "text/plain", "data": "doc-v"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "tool-v",
                 "input": {"arg-key-v": "arg-v"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False,
                 "content": [{"type": "text", "text": "result-v"}]}]},
        ],
    }  # fmt: skip
    seen = inspect_request(body)
    expected = ["sys-v", "user-v", "stop-v", "tool-v", "desc-v", "key-v", "prop-v", "text-v",
                "title-v", "doc-v", "arg-key-v", "arg-v", "result-v", "toolu_1"]  # fmt: skip
    for value in expected:
        assert value in seen.texts, value
    assert B64 not in seen.texts  # the image's bytes: reported, not visited
    assert seen.uninspectable == {Uninspectable.IMAGE}  # a text document is text
    for enum in ("tool_use", "tool_result", "ephemeral", "base64", "text", "user"):
        assert enum not in seen.texts


def test_a_pdf_document_is_a_file_and_its_bytes_are_left_alone() -> None:
    block = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                            "data": B64}}  # fmt: skip
    body = {"messages": [{"role": "user", "content": [block]}]}
    seen = inspect_request(body)
    assert seen.uninspectable == {Uninspectable.FILE} and B64 not in seen.texts
    assert rewrite(body, str.upper)["messages"][0]["content"][0]["source"]["data"] == B64


def test_a_source_field_elsewhere_is_text_like_any_other() -> None:
    """Only a binary block's ``source`` holds a payload; a field of that name in user data
    (metadata, tool input) is visited."""
    body = {"metadata": {"source": {"data": "secret-v", "url": "data:x"}},
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    seen = inspect_request(body)
    assert "secret-v" in seen.texts and "data:x" in seen.texts
    assert not seen.uninspectable


def test_a_responses_request_is_walked_with_its_items_and_parts() -> None:
    body: dict[str, Any] = {
        "model": "gpt", "instructions": "inst-v", "previous_response_id": "resp_1",
        "text": {"format": {"type": "json_schema", "name": "name-v", "schema": {
            "type": "object", "description": "schema-v"}}},
        "input": [
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "text-v"},
                {"type": "input_image", "image_url": f"data:image/png;base64,{B64}",
                 "detail": "auto"},
                {"type": "input_file", "filename": "file-v.pdf",
                 "file_data": f"data:application/pdf;base64,{B64}"}]},
            {"type": "function_call", "call_id": "call_1", "name": "fn-v",
             "arguments": json.dumps({"k": "arg\u0040v"})},
            {"type": "function_call_output", "call_id": "call_1", "output": "out-v"},
        ],
    }  # fmt: skip
    seen = inspect_request(body)
    for value in ("inst-v", "name-v", "schema-v", "text-v", "file-v.pdf", "fn-v", "arg@v",
                  "out-v", "call_1", "resp_1"):  # fmt: skip
        assert value in seen.texts, value
    assert not any(B64 in t for t in seen.texts)
    assert seen.uninspectable == {Uninspectable.IMAGE, Uninspectable.FILE}
    for key in ("instructions", "call_id", "function_call_output", "input_text"):
        assert key not in seen.texts


def restorer_for(*values: tuple[str, str]) -> Restorer:
    mapping = PseudonymMap()
    for entity, value in values:
        mapping.placeholder_for(entity, value)
    return Restorer(mapping)


def test_a_document_is_restored_everywhere_json_escaped_in_arguments() -> None:
    restorer = restorer_for(("PERSON", 'Jo "Q" Doe'))
    message = {"content": [{"type": "text", "text": "hi <PERSON_1>"},
                           {"type": "tool_use", "input": {"who": "<PERSON_1>"}},
                           {"type": "thinking", "thinking": "<PERSON_1>", "signature": "s"}],
               "output": [{"type": "function_call",
                           "arguments": '{"who": "<PERSON_1>"}'}]}  # fmt: skip
    out = restore_document(restorer, message)
    assert out["content"][0]["text"] == 'hi Jo "Q" Doe'
    assert out["content"][1]["input"] == {"who": 'Jo "Q" Doe'}
    assert out["content"][2]["thinking"] == "<PERSON_1>"  # signed by the provider: as it came
    assert json.loads(out["output"][0]["arguments"]) == {"who": 'Jo "Q" Doe'}
    unchanged = {"a": ["b", {"c": 1}]}
    assert restore_document(restorer, unchanged) is unchanged


def test_a_responses_stream_is_restored_across_deltas_and_renumbered() -> None:
    restorer = restorer_for(("EMAIL", "ann@example.org"))
    events = NativeEventRestorer(restorer)
    ids = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    text = "response.output_text.delta"
    received = [
        {"type": "response.created", "sequence_number": 0,
         "response": {"instructions": "<EMAIL_1>"}},
        {"type": text, "sequence_number": 1, **ids, "delta": "to <EMA"},
        {"type": text, "sequence_number": 2, **ids, "delta": "IL_1> and <EM"},
        {"type": "response.output_text.done", "sequence_number": 3, **ids,
         "text": "to <EMAIL_1> and <EM"},
        {"type": "response.completed", "sequence_number": 4, "response": {"output": [
            {"type": "message", "content": [{"type": "output_text", "text": "<EMAIL_1>"}]}]}},
    ]  # fmt: skip
    out = [e for r in received for e in events.feed(r)]
    deltas = "".join(e["delta"] for e in out if e["type"] == "response.output_text.delta")
    done = next(e for e in out if e["type"] == "response.output_text.done")
    assert deltas == done["text"] == "to ann@example.org and <EM"
    assert out[0]["response"]["instructions"] == "ann@example.org"
    assert out[-1]["response"]["output"][0]["content"][0]["text"] == "ann@example.org"
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert len(out) == len(received) + 1  # the held-back "<EM" came as a delta of its own


def test_a_messages_stream_releases_held_text_before_its_block_stops() -> None:
    restorer = restorer_for(("PHONE", "+1 212 555 0199"))
    events = NativeEventRestorer(restorer)

    def delta(index: int, kind: str, field: str, text: str) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": index,
                "delta": {"type": kind, field: text}}  # fmt: skip

    received = [
        {"type": "message_start", "message": {"content": [], "usage": {"input_tokens": 7}}},
        delta(0, "text_delta", "text", "call <PHO"),
        delta(0, "text_delta", "text", "NE_1> or <"),
        {"type": "content_block_stop", "index": 0},
        delta(1, "input_json_delta", "partial_json", '{"n": "<PHONE'),
        delta(1, "input_json_delta", "partial_json", '_1>"}'),
        {"type": "content_block_stop", "index": 1},
        delta(2, "thinking_delta", "thinking", "<PHONE_1>"),
    ]
    out = [e for r in received for e in events.feed(r)]
    text = "".join(e["delta"]["text"] for e in out if e.get("index") == 0 and "delta" in e)
    assert text == "call +1 212 555 0199 or <"
    stop = next(i for i, e in enumerate(out) if e["type"] == "content_block_stop")
    assert out[stop - 1]["delta"]["text"] == "<"  # released just before the stop
    args = "".join(e["delta"]["partial_json"] for e in out if e.get("index") == 1 and "delta" in e)
    assert json.loads(args) == {"n": "+1 212 555 0199"}
    assert out[-1]["delta"]["thinking"] == "<PHONE_1>"
    assert native_usage(received[0]) == (7, None)
    assert native_usage({"type": "message_delta", "usage": {"output_tokens": 3}}) == (None, 3)
