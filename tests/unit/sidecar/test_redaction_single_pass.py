"""Detection runs once per request and skips what cannot match: the shortcuts give exactly
what a plain scan gives.

Each reference here is the straightforward algorithm the shortcuts replace: every pattern
searched from the start of the text, no prefilter, the routing scan run on the texts joined
by newlines and redaction detecting each text again.
"""

from __future__ import annotations

import re
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from clawdbot_sidecar.redaction import (
    BUILTIN_ENTITIES,
    CustomEntity,
    RedactionConfig,
    Redactor,
    Span,
)
from clawdbot_sidecar.redaction.detectors import Detector, resolve_overlaps
from clawdbot_sidecar.routing.features import complexity

# Values of every entity, look-alikes, the characters the prefilters look for, and letters
# whose lower case has another length (they shift positions in a lower-cased copy).
FRAGMENTS = [
    "jane.doe@example.com", "a@b.co", "@", "+44 20 7946 0958", "(212) 555-0182", "030 123456",
    "4111 1111 1111 1111", "4111-1111-1111-1111", "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432", "192.168.1.1", "v1.2.3.4", "fe80::1ff:fe23:4567:890a",
    "dead:beef::cafe", "078-05-1120", "123-45-6789", "11010519491231002X",
    "sk-abcdefghij0123456789abcd", "ghp_" + "a" * 36, "sk_live_" + "b" * 16,
    "AKIAABCDEFGHIJKLMNOP", "Bearer abcdefghijklmnop1234", "BEARER abcdefghijklmnop1234",
    "password=hunter22", "private_key: 'abcd1234'", "api-key = xyz12345", "token: sdfsdf",
    "-----BEGIN PRIVATE KEY-----\nMIIabcdefghijklmnop\n", "-----END PRIVATE KEY-----",
    "version 10.0.19041.1", "5512", "0", "x", "::", "1.", "=", ":", "\n", " ", "(0",
    "İ", "ẞ", "\u017f", "\u212a", "Prove", "step by step", "def f():", "a^2", "\\frac", "∑", "{\n",
    "=>", "COMPARE", "trade-offs", "the quick brown fox",
]  # fmt: skip
SEPARATORS = [" ", "", "\n", ", ", "-", ".", ":", "=", "/", "(", ")", "+", "_", "İ"]
texts = st.lists(
    st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from(SEPARATORS)), min_size=0, max_size=8
).map(lambda pairs: "".join(f + s for f, s in pairs))


def plain_detect(detectors: tuple[Detector, ...], text: str) -> list[Span]:
    """Every pattern from position 0, no prefilter; the same resumption rule."""
    found = []
    for det in detectors:
        pos = 0
        while pos <= len(text):
            m = det.regex.search(text, pos)
            if m is None:
                break
            span = det.check(text, m) if det.check is not None else m.span()
            if span is not None and span[1] > span[0]:
                found.append((span[0], span[1], det.priority, det.entity))
                pos = max(span[1], m.start() + 1)
            else:
                pos = m.start() + 1
    return resolve_overlaps(found)


def plain_present(detectors: tuple[Detector, ...], text: str) -> set[str]:
    return {s.entity for d in detectors for s in plain_detect((d,), text)}


REDACTORS = [
    Redactor(RedactionConfig()),
    Redactor(RedactionConfig(entities=["EMAIL"])),
    Redactor(RedactionConfig(entities=["US_SSN", "PHONE"])),
    Redactor(RedactionConfig(custom=[CustomEntity(name="TICKET", pattern=r"T-\d+\n?\w*")])),
]


@settings(max_examples=300, deadline=None)
@given(texts)
def test_prefilters_and_start_positions_lose_nothing(text: str) -> None:
    for redactor in REDACTORS:
        active = redactor._detectors
        assert redactor.detect(text) == plain_detect(active, text)
        entities = redactor._order
        every = redactor._all_detectors
        expected = [e for e in entities if e in plain_present(every, text)]
        assert redactor.contains_pii(text, entities) == expected


def test_a_text_without_digits_skips_digit_patterns_and_still_finds_the_rest() -> None:
    redactor = REDACTORS[0]
    text = "mail jane.doe@example.com, key ghp_" + "a" * 36 + " and dead:beef::cafe"
    assert not any(c.isdigit() for c in text)
    assert [s.entity for s in redactor.detect(text)] == ["EMAIL", "API_KEY", "IP_ADDRESS"]
    digitless = "dead:beef::cafe and jane@example.org"
    assert [s.entity for s in redactor.detect(digitless)] == ["IP_ADDRESS", "EMAIL"]
    # The assignment pattern needs its separator: without ":" or "=", no secret.
    assert redactor.detect("the password is hunter22") == []
    assert [s.entity for s in redactor.detect("password=hunter22")] == ["API_KEY"]


@settings(max_examples=200, deadline=None)
@given(st.lists(texts, min_size=0, max_size=4))
def test_scan_of_the_parts_is_the_scan_of_the_joined_text(parts: list[str]) -> None:
    for redactor in REDACTORS:
        joined = "\n".join(parts)
        expected = redactor.scan(joined)
        for entity in redactor.contains_pii(joined, BUILTIN_ENTITIES):
            expected.setdefault(entity, 1)
        assert redactor.scan_parts(parts, {}, BUILTIN_ENTITIES) == expected
        assert redactor.scan_parts(parts) == redactor.scan(joined)


@settings(max_examples=200, deadline=None)
@given(st.lists(texts, min_size=1, max_size=4), texts)
def test_redaction_with_the_routing_findings_equals_a_fresh_one(
    parts: list[str], arguments: str
) -> None:
    redactor = REDACTORS[0]
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": p} for p in parts]
        + [{"role": "assistant", "tool_calls": [{"function": {"arguments": arguments}}]}],
    }
    memo: dict[str, object] = {}
    redactor.scan_parts(parts, memo)  # type: ignore[arg-type]
    reused = redactor.redact_request(body, memo=memo)  # type: ignore[arg-type]
    fresh = redactor.redact_request(body)
    assert reused.request == fresh.request
    assert reused.counts == fresh.counts and reused.blocked == fresh.blocked


def test_each_text_is_detected_once_per_request() -> None:
    redactor = REDACTORS[0]
    calls: Counter[str] = Counter()
    inspect = redactor._inspect

    def counting(text: str, detectors: tuple[Detector, ...]) -> object:
        calls[text] += 1
        return inspect(text, detectors)

    redactor._inspect = counting  # type: ignore[method-assign, assignment]
    try:
        parts = ["You are terse.", "Mail jane.doe@example.com", "You are terse."]
        memo: dict[str, object] = {}
        assert redactor.scan_parts(parts, memo) == {"EMAIL": 1}  # type: ignore[arg-type]
        body = {"model": "m", "messages": [{"role": "user", "content": p} for p in parts]}
        result = redactor.redact_request(body, memo=memo)  # type: ignore[arg-type]
    finally:
        del redactor._inspect
    assert result.counts == {"EMAIL": 1}
    assert calls == {"You are terse.": 1, "Mail jane.doe@example.com": 1}


HARD = re.compile(
    r"\b(prove|derive|analy[sz]e|step by step|explain why|compare|optimi[sz]e|refactor|"
    r"debug|architecture|trade-?offs?|theorem|algorithm|complexity)\b",
    re.IGNORECASE,
)
CODE = re.compile(r"```|\bdef |\bclass |\bfunction\b|#include|=>|\{\s*\n")
MATH = re.compile(r"[∑∫√≤≥≠]|\\frac|\\sum|\b\d+\s*[\^*/]\s*\d+")


def plain_complexity(text: str, turns: int) -> float:
    sample = text[-8000:]
    score = min(len(HARD.findall(sample)), 3) * 0.15
    score += 0.25 if CODE.search(sample) else 0.0
    score += 0.15 if MATH.search(sample) else 0.0
    return min(score + min(turns, 10) * 0.015, 1.0)


@settings(max_examples=300, deadline=None)
@given(texts, st.integers(0, 12))
def test_complexity_prefilters_change_no_score(text: str, turns: int) -> None:
    assert complexity(text, turns) == plain_complexity(text, turns)
    # Letters that case-fold onto ASCII ones only under the regex's rules still count.
    assert complexity("pro\u017fe it step by step", 1) == plain_complexity(
        "pro\u017fe it step by step", 1
    )
