# ruff: noqa: RUF001, RUF003 (Chinese punctuation and case folds is what the detectors read)
"""The fast tier's shortcuts (finders, digit and needle prefilters, search starts) find
exactly what the straightforward reference finds: every detector's pattern searched over
the whole text from its start, each match confirmed by its check.

Texts are generated from values of every entity (people's identifiers included), their
cues, look-alikes, and the characters the shortcuts key on, in English and in Chinese.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawdbot_sidecar.redaction import (
    BUILTIN_ENTITIES,
    CustomEntity,
    RedactionConfig,
    Redactor,
    Span,
)
from clawdbot_sidecar.redaction.anchors import analyze, approximate
from clawdbot_sidecar.redaction.detectors import Detector, builtin_detectors, resolve_overlaps
from clawdbot_sidecar.redaction.fastscan import fast_tier_path, scanner_type

EN = [
    "jane.doe@example.com", "josé@ejemplo.es", "jane [ at ] example [dot] com", "a(at)b.org",
    "+44 20 7946 0958", "(212) 555-0182", "212.555.0182", "0044 20 7946 0958", "030 123456",
    "020-7946 0958", "(010)12345678", "phone: 07700900123", "Tel 2125550182", "4111 1111 1111 1111",
    "4111-1111-1111-1111", "5500 0000 0000 0004", "DE89 3704 0044 0532 0130 00",
    "gb82 west 1234 5698 7654 32", "192.168.1.1", "v1.2.3.4", "fe80::1ff:fe23:4567:890a",
    "078-05-1120", "SSN 078051120", "social security number: 078 05 1120",
    "11010519491231002X", "110105 19491231 002X", "sk-abcdefghij0123456789abcd",
    "ghp_" + "a" * 36, "Bearer abcdefghijklmnop1234", "password=hunter22", "api_key: 'x1y2z3w4'",
    "-----BEGIN PRIVATE KEY-----\nMIIabcdefghijklmnop\n", "Dr. Okafor", "Mrs. Brown", "Mr. Li",
    "Maria Garcia", "John F. Kennedy", "Maria says", "patient Okonkwo", "my name is Ann Lee",
    "Dear Ms. Smith", "Grant", "Mark", "Colette Lemonnier", "Dương", "O'Brien",
    "12 Park Avenue, Springfield, IL 62704", "1600 Pennsylvania Ave NW", "Apt 4B",
    "Kastanienallee 12", "Calle Mayor 5", "26, rue Peltier", "P.O. Box 123", "post office box 9",
    "DOB: 03/14/1985", "date of birth 1985-03-14", "born on March 5, 1990", "d.o.b. 5 May 1970",
    "MRN: 12345678", "medical record number 987654", "member ID: ABC123456", "policy no 99887766",
    "1EG4-TE5-MK73", "passport no. X1234567", "driver's license D1234567", "DL 12345678",
    "order #12345678", "invoice 2024-0001", "room 12", "5 mg", "version 10.0.19041.1",
]  # fmt: skip
ZH = [
    "患者王小明", "张医生", "姓名：李娜", "欧阳娜娜", "王超说", "李先生", "这位先生", "向医生",
    "北京市朝阳区建国路88号", "住址：上海市浦东新区世纪大道100号", "阳光花园3栋2单元",
    "出生日期：1990年3月5日", "生于1985-03-14", "病历号：A123456", "住院号 20240001",
    "手机：13800138000", "138 0013 8000", "+86 138-0013-8000", "电话 010-12345678",
    "医保卡号 1234567890", "护照号码 E12345678", "驾驶证号 110105194912310021",
    "卡号4111111111111111", "身份证11010519491231002X", "订单号13800138000",
    "今天", "的", "，", "。",
]  # fmt: skip
# Characters the shortcuts key on: digits, case folds that move positions or fold onto
# ASCII letters, separators, line breaks.
EDGES = ["İ", "ı", "ſ", "\u212a", "ẞ", "0", "1", "@", "+", ":", "=", "(", ")", "-", ".", "\n"]
SEPARATORS = [" ", "", "\n", ", ", "-", ".", ": ", "/", "(", ")", "_", "\t", "，", "İ"]


def _texts(fragments: list[str]) -> st.SearchStrategy[str]:
    parts = st.tuples(st.sampled_from(fragments + EDGES), st.sampled_from(SEPARATORS))
    return st.lists(parts, max_size=8).map(lambda ps: "".join(f + s for f, s in ps))


en_texts = _texts(EN)
zh_texts = _texts(ZH + EN[:20])


def reference(detectors: tuple[Detector, ...], text: str) -> list[tuple[int, int, int, str]]:
    """Every pattern from position 0, no prefilter; a search resumes where a confirmed
    span ends (or one character after a rejected match)."""
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
    return found


def reference_spans(detectors: tuple[Detector, ...], text: str) -> list[Span]:
    return resolve_overlaps(reference(detectors, text))


CONFIGS = [
    RedactionConfig(),
    RedactionConfig(entities=["PERSON", "ADDRESS", "DATE_OF_BIRTH", "PHONE"]),
    RedactionConfig(custom=[CustomEntity(name="TICKET", pattern=r"(?<![A-Z])T-\d{3,}")]),
]
# Both paths: the pure-Python one, and the native scanner's where it is installed.
REDACTORS = [Redactor(c, native=False) for c in CONFIGS]
if scanner_type() is not None:
    REDACTORS += [Redactor(c, native=True) for c in CONFIGS]


def _check(text: str) -> None:
    for redactor in REDACTORS:
        assert redactor.detect(text) == reference_spans(redactor._detectors, text)
        present = {f[3] for f in reference(redactor._all_detectors, text)}
        expected = [e for e in redactor._order if e in present]
        assert redactor.contains_pii(text, redactor._order) == expected


@settings(max_examples=400, deadline=None)
@given(en_texts)
def test_english_texts_find_what_the_reference_finds(text: str) -> None:
    _check(text)


@settings(max_examples=400, deadline=None)
@given(zh_texts)
def test_chinese_texts_find_what_the_reference_finds(text: str) -> None:
    _check(text)


@pytest.mark.parametrize(
    "text",
    [
        # Case folds: "ſ" is an "s" and "İ" an "i" to a case-insensitive cue (the first
        # two were missed when needles were looked for in text.lower()).
        "paſſword=hunter22",
        "paſſport no. X1234567",
        "İnsurance ID: ABC123456",
        "MBİ 1EG4-TE5-MK73 and \u212aastanienallee 12",
        "jane [ at ] example [dot] com",  # missed when the needles wanted "at]"
        "İİ phone: 07700900123 İ",
    ],
)
def test_texts_the_shortcuts_could_get_wrong(text: str) -> None:
    _check(text)


DETECTORS = builtin_detectors(BUILTIN_ENTITIES)


def test_patterns_the_engine_cannot_skip_through_get_a_finder() -> None:
    # Without one the pattern is tried at every position: a regression in speed only,
    # which this makes visible (e.g. after a change to the standard library's parser).
    slow = [d for d in DETECTORS if re.match(r"\(\?[=!<i]", d.regex.pattern)]
    assert slow
    missing = [d.regex.pattern[:40] for d in slow if analyze(d.regex).finder is None]
    assert missing == []


@settings(max_examples=200, deadline=None)
@given(st.one_of(en_texts, zh_texts))
def test_a_finder_stops_where_its_pattern_matches(text: str) -> None:
    for det in DETECTORS:
        finder = analyze(det.regex).finder
        if finder is None:
            continue
        starts = {m.start() for m in (det.regex.match(text, i) for i in range(len(text) + 1)) if m}
        hits = {m.start() for m in (finder.match(text, i) for i in range(len(text) + 1)) if m}
        assert starts <= hits, det.regex.pattern[:40]


def test_digit_requirements_read_from_the_patterns() -> None:
    by_pattern = {d.regex.pattern: analyze(d.regex).needs_digit for d in DETECTORS}
    assert by_pattern[DETECTORS[0].regex.pattern] is False  # e-mail
    assert sum(by_pattern.values()) >= 15
    assert analyze(re.compile(r"(?:a|[0-9])x")).needs_digit is False
    assert analyze(re.compile(r"(?:b[0-9]|[0-9]{2,})")).needs_digit is True
    assert analyze(re.compile(r"x[0-9]*")).needs_digit is False
    assert analyze(re.compile(r"x\d")).needs_digit is False  # \d takes other digits too


@pytest.mark.skipif(scanner_type() is None, reason=f"fast tier path: {fast_tier_path()}")
@settings(max_examples=200, deadline=None)
@given(st.one_of(en_texts, zh_texts))
def test_an_approximation_matches_no_later_than_its_pattern(text: str) -> None:
    make = scanner_type()
    assert make is not None
    for budget in (4, 10, 1000):
        scanner = make(
            [approximate(d.regex, budget) for d in DETECTORS],
            [approximate(d.regex, budget, ascii=True) for d in DETECTORS],
        )
        starts = scanner.first_starts(text)
        for det, start in zip(DETECTORS, starts, strict=True):
            m = det.regex.search(text)
            if m is not None:
                assert 0 <= start <= m.start(), (budget, det.regex.pattern[:40])


def test_every_pattern_gets_an_approximation() -> None:
    for det in DETECTORS:
        assert approximate(det.regex) is not None, det.regex.pattern[:40]
        assert approximate(det.regex, ascii=True) is not None, det.regex.pattern[:40]


@pytest.mark.skipif(scanner_type() is None, reason=f"fast tier path: {fast_tier_path()}")
def test_the_crate_compiles_every_built_in_approximation_and_survives_a_bad_one() -> None:
    assert Redactor(RedactionConfig(), native=True)._scanner.refused() == []  # type: ignore[union-attr]
    make = scanner_type()
    assert make is not None
    scanner = make(["a", "(?:x){1000}{1000}{1000}", None], ["a", "(", None])
    assert scanner.refused() == [1]
    # A refused approximation, like none at all: that detector searches from the start.
    assert scanner.first_starts("xa") == [1, 0, 0]


def test_the_native_scanner_is_used_where_installed_and_can_be_refused() -> None:
    assert not Redactor(RedactionConfig(), native=False).native
    if scanner_type() is None:
        assert fast_tier_path().startswith("python")
        with pytest.raises(RuntimeError, match="not installed"):
            Redactor(RedactionConfig(), native=True)
    else:
        assert fast_tier_path().startswith("native")
        assert Redactor(RedactionConfig()).native
