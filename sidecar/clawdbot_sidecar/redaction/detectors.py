# ruff: noqa: RUF001 (typographic dashes are separators people type)
"""Pattern detectors: candidates by pre-compiled regex, confirmed by validators.

Each detector is a compiled pattern, literal needles that must occur in the text for the
pattern to be worth running (a cheap `in` test before any regex work), and a check that
turns a match into a span (possibly trimmed) or rejects it. Overlapping findings merge
into one span labelled by its longest member, so nothing flagged leaks and the result never
depends on detector order. Patterns err towards finding: a masked look-alike costs a little
answer quality, a missed value leaks it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from .personal import DIGIT_CHECKED, specs
from .validators import (
    IBAN_LENGTHS,
    cn_resident_id_valid,
    iban_valid,
    luhn_valid,
    us_ssn_valid,
)

__all__ = ["Detector", "Span", "builtin_detectors", "custom_detector", "resolve_overlaps"]


@dataclass(frozen=True, slots=True, order=True)
class Span:
    """A finding: `text[start:end]` is a value of `entity`."""

    start: int
    end: int
    entity: str


# A check gets the text and the match, returns the (start, end) to redact or None.
Check = Callable[[str, "re.Match[str]"], tuple[int, int] | None]


@dataclass(frozen=True, slots=True)
class Detector:
    """One entity's compiled pattern, prefilter needles and validation."""

    entity: str
    regex: re.Pattern[str]
    # Lower wins when two overlapping findings have the same length.
    priority: int
    needles: tuple[str, ...] = ()
    # Needles are compared against the lower-cased text (for case-insensitive patterns).
    needles_casefold: bool = False
    check: Check | None = None
    # Every match contains one of these too (compared as they are): a second prefilter.
    requires: tuple[str, ...] = ()
    # Every match has a needle at most this many characters after its start (None: no such
    # bound), so its search can begin that far before the first needle in the text.
    needle_lead: int | None = None
    # Every match has an ASCII digit at most this many characters after its start (None:
    # digits are optional). Texts without a digit skip the pattern; others are searched
    # from that far before their first digit.
    digit_lead: int | None = None
    # Every match holds a character outside ASCII (Chinese text): ASCII texts skip it.
    non_ascii: bool = False
    # Every confirmed finding comes from a match holding an ASCII digit, though not at a
    # fixed distance from its start (the check insists on digits): texts without one skip
    # it. The engine also works this out from the pattern where the pattern says so.
    needs_digit: bool = False


# --- validators bound to matches -------------------------------------------------------

_DIGITS: Final = re.compile(r"[0-9]")


def _digit_count(s: str) -> int:
    return len(_DIGITS.findall(s))


def _check_credit_card(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    # Issuer ranges in use start with 2-6 (Mastercard 2/5, Amex/JCB/Diners 3, Visa 4,
    # Discover/UnionPay 6); one random number in ten passes Luhn, so the prefix matters.
    if m.group()[0] not in "23456":
        return None
    raw = m.group()
    # A grouped match may have taken the first group of whatever number follows: retry
    # without trailing groups before giving up.
    while True:
        digits = raw.replace(" ", "").replace("-", "")
        if len(digits) < 13:
            return None
        if len(digits) <= 19 and luhn_valid(digits):
            return m.start(), m.start() + len(raw)
        cut = max(raw.rfind(" "), raw.rfind("-"))
        if cut <= 0:
            return None
        raw = raw[:cut]


def _check_iban(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    raw = m.group()
    length = IBAN_LENGTHS.get(raw[:2])
    if length is None:
        return None
    # The pattern may run into a following word of four letters ("... 00 BANK"); cut at the
    # country's length, then insist the cut falls on a word boundary.
    seen = 0
    end = m.start()
    for i, ch in enumerate(raw):
        if ch != " ":
            seen += 1
            if seen == length:
                end = m.start() + i + 1
                break
    if seen < length:
        return None
    if end < len(text) and text[end].isalnum():
        return None
    compact = text[m.start() : end].replace(" ", "")
    return (m.start(), end) if iban_valid(compact) else None


# A dotted quad right after a version marker is a version, not an address ("v1.2.3.4",
# "version 10.0.19041.1"); without a marker it is redacted, because masking a version
# costs less than leaking an address.
_VERSION_MARKER: Final = re.compile(
    r"(?:(?<![A-Za-z])v|(?i:\b(?:version|ver\.?|release|build|firmware|fw)[ :]*))\Z"
)


def _check_ipv4(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    if _VERSION_MARKER.search(text, max(0, m.start() - 16), m.start()):
        return None
    return m.span()


def _check_ipv6(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    candidate = m.group()
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return None
    groups = [g for g in candidate.replace(".", ":").split(":") if g]
    # "::", "::1" and C++ scopes like "a::b" are valid addresses but say nothing about anyone.
    if len(groups) < 2 or sum(len(g) for g in groups) < 4:
        return None
    return m.span()


def _check_ssn(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    return m.span() if us_ssn_valid(m["area"], m["group"], m["serial"]) else None


def _check_cn_id(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    return m.span() if cn_resident_id_valid(m.group()) else None


def _check_phone_intl(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    raw = m.group()
    if "  " in raw or ".." in raw or "--" in raw:
        return None
    # Trailing groups may belong to the next number in a list: drop them until what is
    # left is one well-formed number within the E.164 limit of 15 digits.
    while True:
        raw = raw.rstrip(" .-(")
        n = _digit_count(raw)
        if n < 8:
            return None
        if n <= 15 and raw[-1].isdigit() and raw.count("(") == raw.count(")"):
            return m.start(), m.start() + len(raw)
        cut = max(raw.rfind(" "), raw.rfind("-"), raw.rfind("."), raw.rfind("("))
        if cut <= 1:
            return None
        raw = raw[:cut]


def _check_phone_trunk(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    # National numbers behind a trunk 0 have 9-12 digits; dates like 01.02.2024 have 8.
    # Trailing groups beyond 12 digits belong to the next number in a list.
    raw = m.group()
    while _digit_count(raw) > 12:
        cut = max(raw.rfind(" "), raw.rfind("-"), raw.rfind("."), raw.rfind("/"))
        if cut <= 0:
            return None
        raw = raw[:cut]
    return (m.start(), m.start() + len(raw)) if _digit_count(raw) >= 9 else None


def _check_prefixed_key(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    value = m.group()
    # "sk-" also starts hyphenated words; real keys always carry digits.
    if value.startswith("sk-") and not any(c.isdigit() for c in value):
        return None
    return m.span()


_PLACEHOLDER_LIKE: Final = re.compile(r"^(?:\$|%|\{\{|\*+$|x+$|<[A-Z]|\[[A-Z])", re.IGNORECASE)


def _check_assignment(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    for group in ("dq", "sq", "bare"):
        value = m[group]
        if value is None:
            continue
        if _PLACEHOLDER_LIKE.match(value):
            return None  # template variables and masks are not secrets
        if group == "bare":
            if len(value) < 4:
                return None
            # "Secret: keep it" is prose; a colon-assigned bare value must look like a token.
            if m["sep"] == ":" and len(value) < 12 and value.isalpha():
                return None
        return m.span(group)
    return None


# --- patterns --------------------------------------------------------------------------

_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"

_EMAIL: Final = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    r"(?![A-Za-z0-9\-])"
)
_PHONE_INTL: Final = re.compile(r"(?<![\w+])\+[1-9][0-9 .\-()]{6,24}[0-9](?![0-9])")
_PHONE_NANP: Final = re.compile(
    r"(?<![\w+\-.])(?:1[ .\-])?(?:\([2-9][0-9]{2}\)[ .\-]?|[2-9][0-9]{2}[ .\-])"
    r"[0-9]{3}[ .\-][0-9]{4}(?![\w\-]|\.[0-9])"
)
_PHONE_TRUNK: Final = re.compile(
    r"(?<![\w+\-./])(?:0[1-9][0-9]{0,3}(?P<s>[ .\-/])[0-9]{2,8}(?:(?P=s)[0-9]{2,8}){0,3}"
    r"|\(0[1-9][0-9]{0,3}\) ?[0-9]{3,8}(?:[ \-][0-9]{2,8}){0,2})"
    r"(?![\w\-/]|\.[0-9])"
)
# Patterns that open with a character class, the lookbehind after it, let the regex engine
# skip to the next candidate character in C instead of trying the lookbehind at every
# position (2-3x faster searches). "[0-9](?<![\w\-.][0-9])" is "(?<![\w\-.])[0-9]".
_CREDIT_CARD: Final = re.compile(
    r"[0-9](?<![\w\-.][0-9])(?:[0-9]{12,18}"
    r"|[0-9]{3}(?P<s>[ \-])[0-9]{4}(?P=s)[0-9]{4}(?P=s)[0-9]{1,4}(?:(?P=s)[0-9]{1,3})?"
    r"|[0-9]{3}(?P<t>[ \-])[0-9]{6}(?P=t)[0-9]{4,5})"
    r"(?![\w\-]|[.,][0-9])"
)
_IBAN: Final = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![a-z0-9])"
)
# A leading lookahead on the first character lets the engine skip most positions cheaply
# before trying an alternation (three times faster on prose).
_IPV4: Final = re.compile(rf"(?=[0-9])(?<![0-9.])(?:{_OCTET}\.){{3}}{_OCTET}(?![0-9]|\.[0-9])")
_IPV6: Final = re.compile(
    r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:[0-9A-Fa-f]{1,4}|(?:[0-9]{1,3}\.){3}[0-9]{1,3})?(?![0-9A-Za-z:]|\.[0-9])"
)
_US_SSN: Final = re.compile(
    r"(?P<area>[0-9](?<![\w\-][0-9])[0-9]{2})(?P<sep>[\- ])(?P<group>[0-9]{2})(?P=sep)"
    r"(?P<serial>[0-9]{4})(?![\w\-]|\.[0-9])"
)
_CN_ID: Final = re.compile(
    r"[1-9](?<![0-9A-Za-z][1-9])[0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])"
    r"(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx](?![0-9A-Za-z])"
)
_API_KEY_PREFIXED: Final = re.compile(
    r"(?<![A-Za-z0-9_\-])(?:"
    r"sk-[A-Za-z0-9_\-]{20,}"  # OpenAI (sk-, sk-proj-) and Anthropic (sk-ant-)
    r"|gh[pousr]_[A-Za-z0-9]{36,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{22,}"
    r"|glpat-[A-Za-z0-9_\-]{20,}"  # GitLab personal access tokens
    r"|(?:sk|rk)_live_[A-Za-z0-9]{16,}"  # Stripe secret and restricted keys
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face tokens
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|xox[baprs]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_\-]{35}"  # Google API keys
    r"|eyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*"  # JWT
    r")(?![A-Za-z0-9_\-])"
)
_PEM: Final = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
    r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----"
    # A block cut off before its END line is still a key: take its header and base64 lines.
    r"|(?:[ \t]*\r?\n(?:[A-Za-z0-9+/=]{16,}|[A-Za-z\-]+:[^\r\n]*))*)"
)
_BEARER: Final = re.compile(r"(?i:bearer)[ \t]+([A-Za-z0-9._~+/\-]{16,}=*)")
_ASSIGNMENT: Final = re.compile(
    r"(?=[AaCcPpSsTt])(?i:password|passwd|pwd|passphrase|secret|token|api[_\-]?key|access[_\-]?key"
    r"|private[_\-]?key|credentials?)"
    r"[\"']?[ \t]*(?P<sep>[:=])[ \t]*"
    r"(?:\"(?P<dq>[^\"\r\n]{1,256})\"|'(?P<sq>[^'\r\n]{1,256})'|(?P<bare>[^\s\"',;&<>]{1,256}))"
)

# --- less canonical spellings of the same entities ------------------------------------
# Each finds values the canonical pattern above misses; where both match, the findings
# merge. Boundaries are ASCII-only, so Chinese text may touch a value ("卡号4111...").

_CARD_SEP: Final = r"(?:[ \t]*[.\-–_/][ \t]*|[ \t]{1,3})"
_CREDIT_CARD_LOOSE: Final = re.compile(
    r"[2-6](?<![0-9A-Za-z_.\-][2-6])(?:[0-9]{3}(?:"
    + _CARD_SEP
    + r"[0-9]{4}){2}"
    + _CARD_SEP
    + r"[0-9]{1,4}(?:"
    + _CARD_SEP
    + r"[0-9]{1,3})?|[0-9]{3}"
    + _CARD_SEP
    + r"[0-9]{6}"
    + _CARD_SEP
    + r"[0-9]{4,5}|[0-9]{12,18})(?![0-9A-Za-z_]|[.,\-][0-9])"
)
_GROUP_CUT: Final = re.compile(r"[^0-9]+[0-9]+\Z")


def _check_card_loose(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    raw = m.group()
    while True:
        digits = "".join(c for c in raw if c.isdigit())
        if len(digits) < 13:
            return None
        if len(digits) <= 19 and luhn_valid(digits):
            return m.start(), m.start() + len(raw)
        cut = _GROUP_CUT.search(raw)
        if cut is None:
            return None
        raw = raw[: cut.start()]


# IBANs in any case, with spaces, dashes or dots. The match opens at the check digits so
# the search can skip to digits; the two country letters are taken by the check.
_IBAN_LOOSE: Final = re.compile(
    r"[0-9](?<=[A-Za-z]{2}[0-9])(?<![A-Za-z0-9][A-Za-z]{2}[0-9])[0-9]"
    r"(?:[ \t\-.]?[A-Za-z0-9]){11,32}"
)


def _check_iban_loose(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    start = m.start() - 2
    country = text[start : start + 2].upper()
    length = IBAN_LENGTHS.get(country)
    if length is None:
        return None
    chars: list[str] = []
    end = start
    for i in range(start, m.end()):
        ch = text[i]
        if ch.isalnum():
            chars.append(ch.upper())
            if len(chars) == length:
                end = i + 1
                break
    else:
        return None
    if end < len(text) and text[end].isascii() and text[end].isalnum():
        return None
    return (start, end) if iban_valid("".join(chars)) else None


# CN resident IDs written in groups: 6-8-4 or 6-4-4-4, with spaces or dashes.
_CN_ID_LOOSE: Final = re.compile(
    r"[1-9](?<![0-9A-Za-z][1-9])[0-9]{5}(?P<s>[ \t\-]{1,2})(?:[0-9]{8}|[0-9]{4}(?P=s)[0-9]{4})"
    r"(?P=s)[0-9]{3}[0-9Xx](?![0-9A-Za-z])"
)


def _check_cn_id_loose(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    compact = "".join(c for c in m.group() if c.isalnum())
    return m.span() if cn_resident_id_valid(compact) else None


# "+<country>" right after Chinese text, and the "00" international prefix (the same
# trimming as "+<country>" numbers).
_PHONE_INTL_LOOSE: Final = re.compile(
    r"(?:\+|00(?=[1-9]))(?<![0-9A-Za-z_+]\+)(?<![0-9A-Za-z_+]00)[1-9][0-9 .\-()]{6,24}[0-9]"
    r"(?![0-9])"
)
_LATIN: Final = "A-Za-z0-9À-ÖØ-öø-ɏ"
# Addresses with accented letters ("josé@ejemplo.es").
_EMAIL_LATIN: Final = re.compile(
    rf"(?<![{_LATIN}._%+\-])[{_LATIN}][{_LATIN}._%+\-]{{0,63}}"
    rf"@(?:[{_LATIN}](?:[{_LATIN}\-]{{0,61}}[{_LATIN}])?\.)+[A-Za-z]{{2,24}}(?![A-Za-z0-9\-])"
)
# Spelled-out separators in brackets: "jane.doe [at] example [dot] com", "jane(at)ex.org".
_EMAIL_SPELLED: Final = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}[ \t]*[\[({<][ \t]*(?i:at|@)[ \t]*"
    r"[\])}>][ \t]*[A-Za-z0-9\-]{1,63}(?:[ \t]*(?:\.|[\[({<][ \t]*(?i:dot|\.)[ \t]*[\])}>])"
    r"[ \t]*[A-Za-z0-9\-]{1,63})+"
)


PRIORITY: Final[dict[str, int]] = {
    # Ties in length go to the more specific entity: checksummed and cued identifiers
    # before shapes (a medical record number that also reads as a phone number is one).
    "API_KEY": 1,
    "CN_RESIDENT_ID": 2,
    "IBAN": 3,
    "CREDIT_CARD": 4,
    "US_SSN": 5,
    "MEDICAL_RECORD_NUMBER": 6,
    "HEALTH_PLAN_ID": 7,
    "PASSPORT": 8,
    "DRIVERS_LICENSE": 9,
    "DATE_OF_BIRTH": 10,
    "EMAIL": 11,
    "IP_ADDRESS": 12,
    "PHONE": 13,
    "ADDRESS": 14,
    "PERSON": 15,
}
CUSTOM_PRIORITY: Final = 0  # the policy author's own definition wins ties


def builtin_detectors(entities: Iterable[str]) -> list[Detector]:
    """Detectors for the given built-in entity names, in a fixed order."""
    table: dict[str, list[Detector]] = {
        # The local part before the "@" is 1 to 64 characters long.
        "EMAIL": [
            Detector("EMAIL", _EMAIL, PRIORITY["EMAIL"], ("@",), needle_lead=64),
            Detector("EMAIL", _EMAIL_LATIN, PRIORITY["EMAIL"], ("@",), needle_lead=64),
            # Spaces may stand between "at" and its brackets ("[ at ]"): the brackets are
            # what every spelling holds.
            Detector(
                "EMAIL", _EMAIL_SPELLED, PRIORITY["EMAIL"], ("[", "(", "{", "<"),
                requires=("]", ")", "}", ">"),
            ),
        ],
        "PHONE": [
            Detector(
                "PHONE", _PHONE_INTL, PRIORITY["PHONE"], ("+",), check=_check_phone_intl,
                needle_lead=0, digit_lead=1,
            ),
            Detector("PHONE", _PHONE_NANP, PRIORITY["PHONE"], digit_lead=1),  # "(" first
            Detector(
                "PHONE", _PHONE_INTL_LOOSE, PRIORITY["PHONE"], check=_check_phone_intl,
                digit_lead=2,
            ),
            Detector(
                "PHONE", _PHONE_TRUNK, PRIORITY["PHONE"], ("0",), check=_check_phone_trunk,
                needle_lead=1, digit_lead=1,
            ),
        ],
        "CREDIT_CARD": [
            Detector(
                "CREDIT_CARD", _CREDIT_CARD, PRIORITY["CREDIT_CARD"], check=_check_credit_card,
                digit_lead=0,
            ),
            Detector(
                "CREDIT_CARD", _CREDIT_CARD_LOOSE, PRIORITY["CREDIT_CARD"],
                check=_check_card_loose, digit_lead=0,
            ),
        ],
        "IBAN": [
            Detector("IBAN", _IBAN, PRIORITY["IBAN"], check=_check_iban, digit_lead=2),
            Detector(
                "IBAN", _IBAN_LOOSE, PRIORITY["IBAN"], check=_check_iban_loose, digit_lead=0
            ),
        ],
        "IP_ADDRESS": [
            Detector(
                "IP_ADDRESS", _IPV4, PRIORITY["IP_ADDRESS"], (".",), check=_check_ipv4,
                needle_lead=3, digit_lead=0,
            ),
            Detector(
                "IP_ADDRESS", _IPV6, PRIORITY["IP_ADDRESS"], (":",), check=_check_ipv6,
                needle_lead=4,
            ),
        ],
        "US_SSN": [
            Detector("US_SSN", _US_SSN, PRIORITY["US_SSN"], check=_check_ssn, digit_lead=0)
        ],
        "CN_RESIDENT_ID": [
            Detector(
                "CN_RESIDENT_ID", _CN_ID, PRIORITY["CN_RESIDENT_ID"], check=_check_cn_id,
                digit_lead=0,
            ),
            Detector(
                "CN_RESIDENT_ID", _CN_ID_LOOSE, PRIORITY["CN_RESIDENT_ID"],
                check=_check_cn_id_loose, digit_lead=0,
            ),
        ],
        "API_KEY": [
            Detector(
                "API_KEY", _API_KEY_PREFIXED, PRIORITY["API_KEY"],
                ("sk-", "gh", "glpat-", "_live_", "hf_", "AKIA", "ASIA", "xox", "AIza", "eyJ"),
                check=_check_prefixed_key,
                needle_lead=2,  # "_live_" follows "sk" or "rk"; the others open the key
            ),
            Detector("API_KEY", _PEM, PRIORITY["API_KEY"], ("-----BEGIN",), needle_lead=0),
            Detector(
                "API_KEY", _BEARER, PRIORITY["API_KEY"], ("bearer",), needles_casefold=True,
                check=lambda _t, m: m.span(1), needle_lead=0,
            ),
            Detector(
                "API_KEY", _ASSIGNMENT, PRIORITY["API_KEY"],
                ("pass", "pwd", "secret", "token", "key", "credential"),
                needles_casefold=True,
                check=_check_assignment,
                requires=(":", "="),  # the separator the pattern insists on
                needle_lead=8,  # "key" in "private_key"
            ),
        ],
    }  # fmt: skip
    for entity, regex, check, needles, folded, needle_lead, digit_lead, non_ascii in specs():
        table.setdefault(entity, []).append(
            Detector(
                entity,
                regex,
                PRIORITY[entity],
                needles,
                needles_casefold=folded,
                check=check,
                needle_lead=needle_lead,
                digit_lead=digit_lead,
                non_ascii=non_ascii,
                needs_digit=regex in DIGIT_CHECKED,
            )
        )
    chosen = set(entities)
    return [d for name, ds in table.items() if name in chosen for d in ds]


def custom_detector(name: str, pattern: str) -> Detector:
    """A detector for a user-defined entity; the whole match is the value."""
    return Detector(name, re.compile(pattern), CUSTOM_PRIORITY)


def resolve_overlaps(found: list[tuple[int, int, int, str]]) -> list[Span]:
    """Disjoint spans, sorted, from (start, end, priority, entity) candidates.

    Overlapping findings merge into one span covering them all, so no character any
    detector flagged is left in the text. The merged span takes the entity of its longest
    member (ties: the lower priority value), e.g. a CN resident ID over the same digits
    read as a card number.
    """
    spans: list[Span] = []
    best: tuple[int, int] = (0, 0)  # (-length, priority) of the current span's label
    for start, end, priority, entity in sorted(f for f in found if f[1] > f[0]):
        rank = (start - end, priority)
        if spans and start < spans[-1].end:
            last = spans[-1]
            label = entity if rank < best else last.entity
            best = min(best, rank)
            spans[-1] = Span(last.start, max(last.end, end), label)
        else:
            spans.append(Span(start, end, entity))
            best = rank
    return spans
