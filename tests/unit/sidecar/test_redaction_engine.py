"""Rewriting requests: modes, placeholders, OpenAI request shapes, policy configuration."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from clawdbot_api.v1alpha1 import RoutingPolicySpec
from clawdbot_sidecar.redaction import (
    CustomEntity,
    Entity,
    PseudonymMap,
    RedactionConfig,
    RedactionMode,
    Redactor,
    Restorer,
    iter_request_texts,
    map_request_texts,
)

EMAIL = "jane.roe@example.org"
CARD = "4111 1111 1111 1111"
SSN = "123-45-6789"


def chat(*messages: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": list(messages), **extra}


def test_from_api_takes_the_routing_policy_field() -> None:
    spec = RoutingPolicySpec.model_validate(
        {
            "redaction": {
                "mode": "mask",
                "entities": ["EMAIL", "US_SSN"],
                "perEntityMode": {"US_SSN": "block", "TICKET": "pseudonymize"},
                "custom": [{"name": "TICKET", "pattern": "JIRA-[0-9]+"}],
                "restoreInResponses": False,
            }
        }
    )
    config = RedactionConfig.from_api(spec.redaction)
    assert config.active_entities() == ("EMAIL", "US_SSN", "TICKET")
    assert config.mode_for("EMAIL") is RedactionMode.MASK
    assert config.mode_for("US_SSN") is RedactionMode.BLOCK
    assert config.mode_for("TICKET") is RedactionMode.PSEUDONYMIZE
    assert config.restore_in_responses is False


@pytest.mark.parametrize(
    ("redaction", "message"),
    [
        ({"custom": [{"name": "T", "pattern": "("}]}, "custom entity 'T': invalid regular"),
        ({"custom": [{"name": "T", "pattern": "a*"}]}, "custom entity 'T': pattern matches the"),
        ({"custom": [{"name": "EMAIL", "pattern": "x"}]}, "clashes with a built-in"),
        (
            {"custom": [{"name": "T", "pattern": "x"}, {"name": "T", "pattern": "y"}]},
            "defined more than once",
        ),
        ({"perEntityMode": {"NOPE": "mask"}}, "perEntityMode: unknown entity 'NOPE'"),
    ],
)
def test_bad_policies_are_refused_naming_the_entity(
    redaction: dict[str, Any], message: str
) -> None:
    # The API type refuses them already, so no policy the sidecar can't apply gets this far.
    with pytest.raises(ValidationError, match=message):
        RoutingPolicySpec.model_validate({"redaction": redaction})
    with pytest.raises(ValidationError, match=message):
        RedactionConfig.model_validate(redaction)


def test_pseudonymize_is_consistent_and_round_trips() -> None:
    redactor = Redactor(RedactionConfig())
    body = chat(
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": f"Email {EMAIL} about card {CARD}."},
        {"role": "assistant", "content": f"Sure, I will email {EMAIL}."},
        {"role": "user", "content": f"Also cc other@example.org and {EMAIL}."},
    )
    result = redactor.redact_request(body)
    sent = json.dumps(result.request)
    assert EMAIL not in sent and CARD not in sent
    texts = [m["content"] for m in result.request["messages"]]
    assert texts[1] == "Email <EMAIL_1> about card <CREDIT_CARD_1>."
    assert texts[2] == "Sure, I will email <EMAIL_1>."
    assert texts[3] == "Also cc <EMAIL_2> and <EMAIL_1>."
    assert result.counts == {"EMAIL": 4, "CREDIT_CARD": 1}
    assert not result.is_blocked
    # The caller's body is untouched; unrelated fields are carried over.
    assert body["messages"][1]["content"].startswith(f"Email {EMAIL}")
    assert result.request["model"] == "gpt-4o"

    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": texts[3]}}]}
    restored = Restorer(result.mapping).restore_response(answer)
    assert restored["choices"][0]["message"]["content"] == (
        f"Also cc other@example.org and {EMAIL}."
    )


def test_the_same_conversation_gets_the_same_placeholders_on_every_turn() -> None:
    # Requests are stateless; numbering by first appearance keeps a growing conversation's
    # placeholders stable without any server-side state.
    redactor = Redactor(RedactionConfig())
    turn1 = chat({"role": "user", "content": f"I am {EMAIL}, SSN {SSN}"})
    turn2 = chat(
        *turn1["messages"],
        {"role": "assistant", "content": "Hi"},
        {"role": "user", "content": f"{SSN}?"},
    )
    first = redactor.redact_request(turn1).request["messages"]
    second = redactor.redact_request(turn2).request["messages"]
    assert second[0] == first[0]
    assert second[2]["content"] == "<US_SSN_1>?"


def test_shared_mapping_spans_requests() -> None:
    redactor = Redactor(RedactionConfig())
    mapping = PseudonymMap()
    redactor.redact_request(chat({"role": "user", "content": "a@b.io"}), mapping)
    later = redactor.redact_request(chat({"role": "user", "content": "c@d.io a@b.io"}), mapping)
    assert later.request["messages"][0]["content"] == "<EMAIL_2> <EMAIL_1>"


def test_literal_placeholders_in_the_input_are_never_reissued() -> None:
    redactor = Redactor(RedactionConfig())
    body = chat(
        {"role": "user", "content": "Template: Dear <EMAIL_1>, ..."},
        {"role": "user", "content": f"send to {EMAIL}"},
    )
    result = redactor.redact_request(body)
    assert result.request["messages"][1]["content"] == "send to <EMAIL_2>"
    restorer = Restorer(result.mapping)
    assert restorer.restore("Dear <EMAIL_1> at <EMAIL_2>") == f"Dear <EMAIL_1> at {EMAIL}"


def test_mask_mode_replaces_with_the_entity_name_and_keeps_no_map() -> None:
    redactor = Redactor(RedactionConfig(mode=RedactionMode.MASK))
    result = redactor.redact_request(chat({"role": "user", "content": f"{EMAIL} / {SSN}"}))
    assert result.request["messages"][0]["content"] == "[EMAIL] / [US_SSN]"
    assert len(result.mapping) == 0
    assert result.counts == {"EMAIL": 1, "US_SSN": 1}


def test_block_mode_marks_the_request_and_still_masks() -> None:
    config = RedactionConfig(per_entity_mode={"US_SSN": RedactionMode.BLOCK})
    redactor = Redactor(config)
    result = redactor.redact_request(chat({"role": "user", "content": f"{EMAIL} {SSN}"}))
    assert result.is_blocked and result.blocked == frozenset({"US_SSN"})
    assert result.request["messages"][0]["content"] == "<EMAIL_1> [US_SSN]"
    clean = redactor.redact_request(chat({"role": "user", "content": EMAIL}))
    assert not clean.is_blocked


def test_custom_entities_follow_their_mode() -> None:
    config = RedactionConfig(
        custom=[CustomEntity(name="PROJECT", pattern=r"Project [A-Z][a-z]+")],
        per_entity_mode={"PROJECT": RedactionMode.PSEUDONYMIZE},
        mode=RedactionMode.MASK,
    )
    result = Redactor(config).redact_request(
        chat({"role": "user", "content": f"Project Falcon, owner {EMAIL}"})
    )
    assert result.request["messages"][0]["content"] == "<PROJECT_1>, owner [EMAIL]"
    assert Restorer(result.mapping).restore("<PROJECT_1> ok") == "Project Falcon ok"


def test_disabled_redaction_returns_the_request_unchanged() -> None:
    redactor = Redactor(RedactionConfig(enabled=False))
    body = chat({"role": "user", "content": EMAIL})
    result = redactor.redact_request(body)
    assert result.request == body and result.counts == {}
    assert redactor.redact_text(EMAIL).text == EMAIL
    # Detection still answers, for routing rules on PII presence.
    assert redactor.contains_pii(EMAIL) == ["EMAIL"]


def test_content_parts_tool_calls_and_legacy_fields_are_all_redacted() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://x/a@b.io/scan.png"}}
    inline = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = chat(
        {"role": "user", "content": [{"type": "text", "text": f"to {EMAIL}"}, image, inline]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "send", "arguments": json.dumps({"to": EMAIL})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": f"sent to {EMAIL}"},
        {"role": "assistant", "function_call": {"name": "f", "arguments": f'{{"ssn": "{SSN}"}}'}},
    )
    result = Redactor(RedactionConfig()).redact_request(body)
    msgs = result.request["messages"]
    assert msgs[0]["content"][0]["text"] == "to <EMAIL_1>"
    # A URL the cloud would fetch is text that leaves; the image bytes are not text (the
    # routing core keeps such a request local: see test_walker.py).
    assert msgs[0]["content"][1]["image_url"]["url"] == "https://x/<EMAIL_2>/scan.png"
    assert msgs[0]["content"][2] is inline
    args = json.loads(msgs[1]["tool_calls"][0]["function"]["arguments"])
    assert args == {"to": "<EMAIL_1>"}  # placeholders survive inside JSON strings
    assert msgs[1]["tool_calls"][0]["function"]["name"] == "send"
    assert msgs[2]["content"] == "sent to <EMAIL_1>"
    assert json.loads(msgs[3]["function_call"]["arguments"]) == {"ssn": "<US_SSN_1>"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": "m", "prompt": "mail a@b.io"}, {"model": "m", "prompt": "mail <EMAIL_1>"}),
        (
            {"model": "m", "prompt": ["a@b.io", "c@d.io"]},
            {"model": "m", "prompt": ["<EMAIL_1>", "<EMAIL_2>"]},
        ),
        (
            {"model": "e", "input": ["x a@b.io", [1, 2, 3]]},
            {"model": "e", "input": ["x <EMAIL_1>", [1, 2, 3]]},
        ),
    ],
)
def test_completions_and_embeddings_inputs(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert Redactor(RedactionConfig()).redact_request(body).request == expected


def test_iter_and_map_request_texts_visit_the_same_texts() -> None:
    body = chat(
        {"role": "user", "content": [{"type": "text", "text": "one"}]},
        {"role": "user", "content": "two"},
        "not a message",
        {"role": "assistant", "tool_calls": [{"function": {"arguments": "three"}}, "junk"]},
    )
    # Malformed entries go to the cloud as they are, so they are text to inspect as well.
    texts = ["one", "two", "not a message", "three", "junk"]
    assert list(iter_request_texts(body)) == texts
    upper = map_request_texts(body, str.upper)
    assert list(iter_request_texts(upper)) == [t.upper() for t in texts]
    assert upper["messages"][2] == "NOT A MESSAGE"


def test_only_enabled_entities_are_redacted() -> None:
    redactor = Redactor(RedactionConfig(entities=[Entity.US_SSN]))
    out = redactor.redact_text(f"{EMAIL} {SSN}")
    assert out.text == f"{EMAIL} <US_SSN_1>"


def test_values_never_appear_in_reprs() -> None:
    redactor = Redactor(RedactionConfig())
    result = redactor.redact_request(chat({"role": "user", "content": f"{EMAIL} {SSN}"}))
    for shown in (repr(result), repr(result.mapping), repr(redactor.detect(EMAIL))):
        assert EMAIL not in shown and SSN not in shown


SENSITIVE = [
    EMAIL,
    CARD,
    SSN,
    "+49 30 1234567",
    "GB82WEST12345698765432",
    "10.0.0.1",
    "2001:db8::8a2e:370:7334",
    "11010519491231002X",
    "AKIAIOSFODNN7EXAMPLE",
    "(212) 555-0199",
    "020 7946 0958",
    "DE89 3704 0044 0532 0130 00",
    "sk-proj-Ab3dEfGhIjKlMnOpQrStUv",
]
FILLER = ["hello", "is", "<b>", "x < y", "<EMAIL_1>", "v2", "42", "-", "(", ":", "1", "0"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(SENSITIVE + FILLER), max_size=10),
    st.sampled_from([" ", ", ", "\n", " and "]),
)
def test_pseudonymize_then_restore_is_the_identity(words: list[str], sep: str) -> None:
    # Values side by side in lists are where greedy patterns used to swallow or hide one.
    text = sep.join(words)
    redactor = Redactor(RedactionConfig())
    result = redactor.redact_request({"model": "m", "prompt": text})
    sent = result.request["prompt"]
    for value in SENSITIVE:
        assert value not in sent
    assert Restorer(result.mapping).restore(sent) == text
