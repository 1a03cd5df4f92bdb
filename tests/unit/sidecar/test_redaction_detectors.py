"""Detectors: what each built-in entity finds, and the near misses it must leave alone."""

from __future__ import annotations

import re
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawdbot_sidecar.redaction import (
    BUILTIN_ENTITIES,
    CustomEntity,
    Entity,
    RedactionConfig,
    Redactor,
    contains_pii,
    detectors,
)

REDACTOR = Redactor(RedactionConfig())


def found(text: str) -> list[tuple[str, str]]:
    return [(s.entity, text[s.start : s.end]) for s in REDACTOR.detect(text)]


def test_entity_names_are_the_api_enum() -> None:
    assert tuple(e.value for e in Entity) == BUILTIN_ENTITIES


@pytest.mark.parametrize(
    ("text", "entity", "value"),
    [
        ("mail john.doe+news@mail.example.co.uk", "EMAIL", "john.doe+news@mail.example.co.uk"),
        ("call +1 415 555 2671 now", "PHONE", "+1 415 555 2671"),
        ("call +44 20 7946 0958.", "PHONE", "+44 20 7946 0958"),
        ("call (212) 555-0199 now", "PHONE", "(212) 555-0199"),
        ("call 555.123.4567 now", "PHONE", "555.123.4567"),
        ("UK office 020 7946 0958", "PHONE", "020 7946 0958"),
        ("card 4111 1111 1111 1111 exp 12/29", "CREDIT_CARD", "4111 1111 1111 1111"),
        ("card 4111-1111-1111-1111.", "CREDIT_CARD", "4111-1111-1111-1111"),
        ("amex 3782 822463 10005", "CREDIT_CARD", "3782 822463 10005"),
        ("card:5500005555555559", "CREDIT_CARD", "5500005555555559"),
        ("pay to DE89 3704 0044 0532 0130 00 please", "IBAN", "DE89 3704 0044 0532 0130 00"),
        ("pay to GB82WEST12345698765432.", "IBAN", "GB82WEST12345698765432"),
        ("pay to DE89 3704 0044 0532 0130 00 BANK", "IBAN", "DE89 3704 0044 0532 0130 00"),
        ("host 10.0.12.7 is down", "IP_ADDRESS", "10.0.12.7"),
        ("host 2001:db8:85a3::8a2e:370:7334 is down", "IP_ADDRESS", "2001:db8:85a3::8a2e:370:7334"),
        ("peer fe80::1ff:fe23:4567:890a%eth0", "IP_ADDRESS", "fe80::1ff:fe23:4567:890a"),
        ("SSN 123-45-6789.", "US_SSN", "123-45-6789"),
        ("SSN 123 45 6789", "US_SSN", "123 45 6789"),
        ("身份证 11010519491231002X 号", "CN_RESIDENT_ID", "11010519491231002X"),
        ("key sk-proj-Ab3dEfGhIjKlMnOpQrStUv now", "API_KEY", "sk-proj-Ab3dEfGhIjKlMnOpQrStUv"),
        ("token ghp_" + "A1b2" * 9, "API_KEY", "ghp_" + "A1b2" * 9),
        ("aws AKIAIOSFODNN7EXAMPLE", "API_KEY", "AKIAIOSFODNN7EXAMPLE"),
        ("gitlab glpat-Ab3dEfGhIjKlMnOpQrSt", "API_KEY", "glpat-Ab3dEfGhIjKlMnOpQrSt"),
        ("Authorization: Bearer abc.DEF-123_456~xyz", "API_KEY", "abc.DEF-123_456~xyz"),
        ("DB_PASSWORD=s3cr3t-Value", "API_KEY", "s3cr3t-Value"),
        ('{"api_key": "abcd-1234"}', "API_KEY", "abcd-1234"),
        ("export OPENAI_API_KEY='q9w8e7r6'", "API_KEY", "q9w8e7r6"),
    ],
)
def test_detects(text: str, entity: str, value: str) -> None:
    assert (entity, value) in found(text)


def test_pem_private_key_is_one_finding() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabc\n-----END RSA PRIVATE KEY-----"
    assert found(f"here:\n{pem}\nthanks") == [("API_KEY", pem)]


@pytest.mark.parametrize(
    ("text", "entity", "why"),
    [
        ("card 4111 1111 1111 1112", "CREDIT_CARD", "Luhn fails"),
        ("order 1234567812345678 shipped", "CREDIT_CARD", "Luhn-valid but no issuer prefix"),
        ("pay to DE89 3704 0044 0532 0130 01", "IBAN", "IBAN mod-97 fails"),
        ("pay to XX89 3704 0044 0532 0130 00", "IBAN", "no such IBAN country"),
        ("pay to DE89370400440532013000X", "IBAN", "runs into the next word"),
        ("SSN 000-12-3456", "US_SSN", "area 000"),
        ("SSN 666-12-3456", "US_SSN", "area 666"),
        ("SSN 923-12-3456", "US_SSN", "area 9xx"),
        ("SSN 123-00-4567", "US_SSN", "group 00"),
        ("SSN 123-45-0000", "US_SSN", "serial 0000"),
        ("SSN 123-45 6789", "US_SSN", "mixed separators"),
        ("id 110105194912310021", "CN_RESIDENT_ID", "CN checksum wrong"),
        ("id 11010519491331002X", "CN_RESIDENT_ID", "CN birth month 13"),
        ("running v1.2.3.4 and version 10.0.19041.1", "IP_ADDRESS", "versions"),
        ("at 12:30:45 the MAC 00:1a:2b:3c:4d:5e", "IP_ADDRESS", "times and MACs"),
        ("std::vector and ::1 are not personal", "IP_ADDRESS", "C++ scopes and loopback"),
        ("999.10.10.10 is not an address", "IP_ADDRESS", "octet out of range"),
        ("date 01.02.2024 and 2024-01-02", "PHONE", "dates are not phones"),
        ("a sk-learn-style-hyphenated-word-here", "API_KEY", "sk- word without digits"),
        ("password: ${DB_PASSWORD} and token=****", "API_KEY", "template variables, masks"),
        ("Secret: keep it", "API_KEY", "prose after a colon"),
        ("the user@localhost shell", "EMAIL", "no dotted domain"),
    ],
)
def test_near_misses_are_not_findings(text: str, entity: str, why: str) -> None:
    assert entity not in {e for e, _ in found(text)}, why
    assert REDACTOR.contains_pii(text, [entity]) == [], why
    if "IBAN" not in why:
        # The digits of a mistyped IBAN may still pass for a phone or card number:
        # over-masking is the price of never skipping a number that follows another.
        assert found(text) == [], why


def test_numbers_in_a_row_are_each_found() -> None:
    cards = "4111 1111 1111 1111 5500 0055 5555 5559"
    assert [v for _, v in found(cards)] == ["4111 1111 1111 1111", "5500 0055 5555 5559"]
    phones = "020 7946 0958 030 1234567"
    assert [e for e, _ in found(phones)] == ["PHONE", "PHONE"]
    # A grouped match that swallowed the next number's first group is retried without it.
    assert found("4111 1111 1111 1111 1 more") == [("CREDIT_CARD", "4111 1111 1111 1111")]
    assert found("+49 30 1234567 (212) 555-0199") == [
        ("PHONE", "+49 30 1234567"),
        ("PHONE", "(212) 555-0199"),
    ]


def test_partly_overlapping_findings_merge_so_nothing_leaks() -> None:
    # The phone pattern runs on into the card's first group; both values go, as one span.
    text = "+49 30 1234567 4111 1111 1111 1111"
    assert found(f"call {text}.") == [("CREDIT_CARD", text)]


def test_overlaps_resolve_to_the_longest_finding() -> None:
    # A CN resident ID is also an 18-digit run; it must not come back as two things.
    assert found("ID 44030419900307123X.") == [("CN_RESIDENT_ID", "44030419900307123X")]
    # An email whose domain is an IPv4-looking label stays one email.
    assert found("x a.b@mail.10.0.0.1.example.com") == [("EMAIL", "a.b@mail.10.0.0.1.example.com")]


def test_findings_are_sorted_and_disjoint() -> None:
    text = "a@b.io, 10.0.0.1, 123-45-6789, +49 30 1234567, 4111111111111111, b@c.io"
    spans = REDACTOR.detect(text)
    assert [s.entity for s in spans] == [
        "EMAIL",
        "IP_ADDRESS",
        "US_SSN",
        "PHONE",
        "CREDIT_CARD",
        "EMAIL",
    ]
    assert all(a.end <= b.start for a, b in pairwise(spans))


def test_disabled_entities_are_not_detected() -> None:
    only_email = Redactor(RedactionConfig(entities=[Entity.EMAIL]))
    spans = only_email.detect("a@b.io and 123-45-6789")
    assert [s.entity for s in spans] == ["EMAIL"]


def test_custom_entity_is_detected_and_wins_ties() -> None:
    config = RedactionConfig(custom=[CustomEntity(name="EMPLOYEE_ID", pattern=r"\bEMP-[0-9]{6}\b")])
    redactor = Redactor(config)
    spans = redactor.detect("ask EMP-004211 about it")
    assert [(s.entity, s.start, s.end) for s in spans] == [("EMPLOYEE_ID", 4, 14)]


def test_contains_pii_names_entities_in_canonical_order() -> None:
    text = "IBAN GB82WEST12345698765432, mail a@b.io, mail c@d.io"
    assert REDACTOR.contains_pii(text) == ["EMAIL", "IBAN"]
    assert REDACTOR.contains_pii(text, ["IBAN", "PHONE"]) == ["IBAN"]
    assert REDACTOR.contains_pii("nothing here, 4111 1111 1111 1112") == []


def test_contains_pii_asks_about_entities_the_policy_does_not_redact() -> None:
    only_email = Redactor(RedactionConfig(entities=[Entity.EMAIL]))
    assert only_email.contains_pii("SSN 123-45-6789") == []
    assert only_email.contains_pii("SSN 123-45-6789", ["US_SSN"]) == ["US_SSN"]


def test_contains_pii_knows_custom_entities() -> None:
    config = RedactionConfig(custom=[CustomEntity(name="TICKET", pattern=r"JIRA-[0-9]+")])
    assert Redactor(config).contains_pii("see JIRA-12 and a@b.io") == ["EMAIL", "TICKET"]


def test_module_contains_pii_covers_builtins_only() -> None:
    assert contains_pii("a@b.io 10.1.2.3", ["EMAIL", "IP_ADDRESS"]) == ["EMAIL", "IP_ADDRESS"]
    assert contains_pii("a@b.io 10.1.2.3", ["IP_ADDRESS"]) == ["IP_ADDRESS"]
    assert contains_pii("a@b.io", []) == []
    with pytest.raises(ValueError, match="TICKET"):
        contains_pii("x", ["TICKET"])


def test_detection_is_linear_enough_on_large_inputs() -> None:
    # Pathological near-matches (long digit and hex runs) must not blow up the regexes.
    text = ("1234 " * 4000) + ("a:" * 4000) + ("x" * 20000) + "@" + ("-" * 5000)
    assert REDACTOR.detect(text) == REDACTOR.detect(text)


# The patterns as first written, lookbehind first; the detectors open with the character
# class instead (a faster search), which must match exactly the same.
_LOOKBEHIND_FIRST = {
    "_CREDIT_CARD": (
        r"(?<![\w\-.])(?:[0-9]{13,19}"
        r"|[0-9]{4}(?P<s>[ \-])[0-9]{4}(?P=s)[0-9]{4}(?P=s)[0-9]{1,4}(?:(?P=s)[0-9]{1,3})?"
        r"|[0-9]{4}(?P<t>[ \-])[0-9]{6}(?P=t)[0-9]{4,5})"
        r"(?![\w\-]|[.,][0-9])"
    ),
    "_US_SSN": (
        r"(?<![\w\-])(?P<area>[0-9]{3})(?P<sep>[\- ])(?P<group>[0-9]{2})(?P=sep)"
        r"(?P<serial>[0-9]{4})(?![\w\-]|\.[0-9])"
    ),
    "_CN_ID": (
        r"(?<![0-9A-Za-z])[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])"
        r"(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx](?![0-9A-Za-z])"
    ),
}


# Pieces that build card numbers, SSNs and resident IDs, whole or cut, among neighbours that
# the boundary checks look at.
_PIECES = ["4111 1111 1111 1111", "123-45-6789", "078 05 1120", "11010519491231002X",
           "4111", "1111", "5", "123", "45", "6789", "110105", "1949", "1231", "002", "X",
           "19", "0", " ", "-", ".", ",", "_", "a", "Z", "\n"]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(_PIECES), max_size=16).map("".join),
    st.sampled_from(sorted(_LOOKBEHIND_FIRST)),
)
def test_character_class_first_patterns_match_as_the_lookbehind_first_ones(
    text: str, name: str
) -> None:
    faster: re.Pattern[str] = getattr(detectors, name)
    plain = re.compile(_LOOKBEHIND_FIRST[name])
    for start in range(len(text) + 1):
        a, b = faster.search(text, start), plain.search(text, start)
        assert (a and (a.span(), a.groupdict())) == (b and (b.span(), b.groupdict()))
