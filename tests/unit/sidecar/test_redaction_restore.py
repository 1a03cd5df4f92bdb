"""Restoring answers: whole responses, text streams and OpenAI SSE chunks."""

from __future__ import annotations

import copy
import json
from itertools import combinations, pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from clawdbot_sidecar.redaction import PseudonymMap, RedactionConfig, Redactor, Restorer

EMAIL = "jane.roe@example.org"
SSN = "123-45-6789"


def _mapping() -> PseudonymMap:
    mapping = PseudonymMap()
    redactor = Redactor(RedactionConfig())
    emails = " ".join(f"u{i}@example.org" for i in range(1, 12))  # issues <EMAIL_1..11>
    redactor.redact_text(f"{EMAIL} {SSN} {emails}", mapping)
    return mapping


MAPPING = _mapping()
RESTORER = Restorer(MAPPING)
# <EMAIL_1> is a prefix of <EMAIL_10>'s text up to its digit: the hard case for streaming.
ANSWER = "Hi <EMAIL_1>, SSN <US_SSN_1> a<b <EMAIL_10> <EMAIL_99> <EMAIL_1"
EXPECTED = RESTORER.restore(ANSWER)


def _stream(chunks: list[str]) -> str:
    stream = RESTORER.stream()
    return "".join(stream.feed(c) for c in chunks) + stream.flush()


def test_restore_replaces_issued_placeholders_only() -> None:
    assert (f"Hi {EMAIL}, SSN {SSN} a<b u9@example.org <EMAIL_99> <EMAIL_1") == EXPECTED


def test_every_single_and_double_split_restores_identically() -> None:
    n = len(ANSWER)
    for i in range(n + 1):
        assert _stream([ANSWER[:i], ANSWER[i:]]) == EXPECTED, i
    for i, j in combinations(range(n + 1), 2):
        assert _stream([ANSWER[:i], ANSWER[i:j], ANSWER[j:]]) == EXPECTED, (i, j)


def test_one_character_chunks() -> None:
    assert _stream(list(ANSWER)) == EXPECTED


def test_nothing_is_held_back_that_cannot_become_a_placeholder() -> None:
    stream = RESTORER.stream()
    assert stream.feed("x < y and <EMA") == "x < y and "
    assert stream.pending == "<EMA"
    assert stream.feed("IL_1> done <") == f"{EMAIL} done "
    assert stream.feed("b") == "<b"


@st.composite
def _chunkings(draw: st.DrawFn) -> tuple[str, list[str]]:
    pieces = draw(
        st.lists(
            st.sampled_from(["<EMAIL_1>", "<EMAIL_10>", "<US_SSN_1>", "<", ">", "_1", "a", " "]),
            max_size=25,
        )
    )
    text = "".join(pieces)
    cuts = sorted(draw(st.sets(st.integers(0, len(text)), max_size=8)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(_chunkings())
def test_any_chunking_restores_like_the_whole_text(case: tuple[str, list[str]]) -> None:
    text, chunks = case
    assert _stream(chunks) == RESTORER.restore(text)


def _chat_chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


def _content(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if c["choices"] and c["choices"][0]["index"] == index
    )


def test_chat_chunks_restore_split_placeholders_and_release_on_finish() -> None:
    restorer = RESTORER.chunks()
    sent = [
        _chat_chunk(0, {"role": "assistant", "content": ""}),
        _chat_chunk(0, {"content": "Mail <EMA"}),
        _chat_chunk(0, {"content": "IL_1> now <US_SS"}),
        _chat_chunk(0, {}, finish="stop"),
    ]
    original = copy.deepcopy(sent)
    out = [restorer.feed(c) for c in sent]
    assert _content(out) == f"Mail {EMAIL} now <US_SS"
    assert out[1]["choices"][0]["delta"]["content"] == "Mail "
    assert out[3]["choices"][0]["finish_reason"] == "stop"
    assert out[3]["id"] == "chatcmpl-1"
    assert sent == original  # the input chunks are not modified
    assert restorer.flush() is None


def test_choices_are_independent_streams() -> None:
    restorer = RESTORER.chunks()
    out = [
        restorer.feed(_chat_chunk(0, {"content": "<EMAIL"})),
        restorer.feed(_chat_chunk(1, {"content": "<US_SSN_"})),
        restorer.feed(_chat_chunk(1, {"content": "1>"})),
        restorer.feed(_chat_chunk(0, {"content": "_1>!"})),
    ]
    assert _content(out, 0) == f"{EMAIL}!"
    assert _content(out, 1) == SSN


def test_tool_call_arguments_are_restored_per_call() -> None:
    restorer = RESTORER.chunks()
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "send", "arguments": '{"to": "<EMA'},
    }
    out = [
        restorer.feed(_chat_chunk(0, {"tool_calls": [first]})),
        restorer.feed(
            _chat_chunk(0, {"tool_calls": [{"index": 0, "function": {"arguments": 'IL_1>"}'}}]})
        ),
        restorer.feed(
            _chat_chunk(0, {"tool_calls": [{"index": 1, "function": {"arguments": "<US_"}}]})
        ),
        restorer.feed(_chat_chunk(0, {}, finish="tool_calls")),
    ]
    args: dict[int, str] = {}
    for chunk in out:
        for call in chunk["choices"][0]["delta"].get("tool_calls", []):
            args[call["index"]] = args.get(call["index"], "") + call["function"]["arguments"]
    assert args == {0: f'{{"to": "{EMAIL}"}}', 1: "<US_"}
    assert out[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "send"


def test_completions_text_chunks_and_flush_without_finish_reason() -> None:
    restorer = RESTORER.chunks()
    template = {"id": "cmpl-1", "object": "text_completion", "model": "m"}
    out = [
        restorer.feed(
            {**template, "choices": [{"index": 0, "text": "to <EMAIL_1>", "finish_reason": None}]}
        ),
        restorer.feed(
            {**template, "choices": [{"index": 0, "text": " <EMAIL_1", "finish_reason": None}]}
        ),
    ]
    assert [c["choices"][0]["text"] for c in out] == [f"to {EMAIL}", " "]
    tail = restorer.flush(template)
    assert tail == {**template, "choices": [{"index": 0, "text": "<EMAIL_1"}]}


def test_usage_only_chunks_pass_through() -> None:
    usage = {"id": "x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    assert RESTORER.chunks().feed(usage) == usage


def test_restore_response_covers_tool_calls_and_completions_text() -> None:
    response = {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Done, <EMAIL_1>.",
                    "tool_calls": [{"function": {"name": "f", "arguments": '{"s": "<US_SSN_1>"}'}}],
                },
            },
            {"index": 1, "text": "<EMAIL_1>"},
        ]
    }
    out = RESTORER.restore_response(response)
    assert out["choices"][0]["message"]["content"] == f"Done, {EMAIL}."
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == (
        f'{{"s": "{SSN}"}}'
    )
    assert out["choices"][1]["text"] == EMAIL
    assert response["choices"][1]["text"] == "<EMAIL_1>"  # input untouched


def test_restorer_counts_what_it_put_back() -> None:
    restorer = Restorer(MAPPING)
    restorer.restore("no placeholders <EMAIL_99>")
    assert restorer.restored == 0
    stream = restorer.stream()
    stream.feed("<EMAIL_1> and <US_SS")
    stream.feed("N_1>")
    assert restorer.restored == 2


def test_restoring_copies_what_it_rewrites_and_leaves_the_input_alone() -> None:
    call = {"index": 0, "function": {"name": "send", "arguments": '{"to": "<EMAIL_1>"}'}}
    response = {
        "id": "r",
        "usage": {"prompt_tokens": 3},
        "choices": [
            {"index": 0, "message": {"content": "<EMAIL_1>", "tool_calls": [call, "odd"]}},
            "not a choice",
        ],
    }
    chunk = _chat_chunk(0, {"content": "<US_SSN_1>", "tool_calls": [call]}, finish="stop")
    before = copy.deepcopy((response, chunk))
    out = RESTORER.restore_response(response)
    restored = RESTORER.chunks().feed(chunk)
    assert (response, chunk) == before
    message = out["choices"][0]["message"]
    assert message["content"] == EMAIL
    assert message["tool_calls"][0]["function"] == {
        "name": "send",
        "arguments": f'{{"to": "{EMAIL}"}}',
    }
    assert message["tool_calls"][1] == "odd" and out["choices"][1] == "not a choice"
    assert out["usage"] == {"prompt_tokens": 3}
    delta = restored["choices"][0]["delta"]
    assert delta["content"] == SSN and EMAIL in delta["tool_calls"][0]["function"]["arguments"]


# A value that would end a JSON string early and smuggle a key in, were it not escaped.
HOSTILE = 'O"Brien\\ "admin": true, "x'


def _hostile_map() -> tuple[PseudonymMap, str]:
    mapping = PseudonymMap()
    return mapping, mapping.placeholder_for("PERSON", HOSTILE)


def test_values_restored_into_tool_arguments_keep_the_json_intact() -> None:
    mapping, placeholder = _hostile_map()
    arguments = json.dumps({"name": placeholder, "n": 1})
    answer = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}],
        "function_call": {"name": "g", "arguments": arguments}}}]}  # fmt: skip
    out = Restorer(mapping).restore_response(answer)["choices"][0]["message"]
    for args in (out["tool_calls"][0]["function"]["arguments"], out["function_call"]["arguments"]):
        assert json.loads(args) == {"name": HOSTILE, "n": 1}
    # Streamed in pieces that split the placeholder, too.
    chunks = Restorer(mapping).chunks()
    pieces = [arguments[i : i + 5] for i in range(0, len(arguments), 5)]
    got = ""
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        call = {"index": 0, "function": {"arguments": piece}}
        choice = {"index": 0, "finish_reason": "tool_calls" if last else None,
                  "delta": {"tool_calls": [call]}}  # fmt: skip
        chunk = {"choices": [choice]}
        delta = chunks.feed(chunk)["choices"][0]["delta"]
        got += "".join(c["function"]["arguments"] for c in delta.get("tool_calls", []))
    assert json.loads(got) == {"name": HOSTILE, "n": 1}


def test_json_mode_answers_are_restored_as_json() -> None:
    mapping, placeholder = _hostile_map()
    content = json.dumps({"patient": placeholder})
    answer = {"choices": [{"index": 0, "finish_reason": "stop",
              "message": {"role": "assistant", "content": content}}]}  # fmt: skip
    restored = Restorer(mapping, json_content=True).restore_response(answer)
    assert json.loads(restored["choices"][0]["message"]["content"]) == {"patient": HOSTILE}
    # Without JSON mode the text gets the value verbatim, as prose should.
    plain = Restorer(mapping).restore_response(answer)["choices"][0]["message"]["content"]
    assert HOSTILE in plain
