# ruff: noqa: RUF001 (Chinese punctuation is part of the examples)
"""The fast tier's people detectors: names, addresses, birth dates, medical record,
health-plan, passport and licence numbers, national phone formats, and the old entities in
less canonical spellings; the look-alikes they must leave alone."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawdbot_sidecar.redaction import Entity, RedactionConfig, RedactionMode, Redactor

REDACTOR = Redactor(RedactionConfig())


def found(text: str) -> list[tuple[str, str]]:
    return [(s.entity, text[s.start : s.end]) for s in REDACTOR.detect(text)]


def test_the_new_entities_are_in_the_api_enum() -> None:
    names = {e.value for e in Entity}
    assert {"PERSON", "ADDRESS", "DATE_OF_BIRTH", "MEDICAL_RECORD_NUMBER", "HEALTH_PLAN_ID",
            "PASSPORT", "DRIVERS_LICENSE"} <= names  # fmt: skip


@pytest.mark.parametrize(
    ("text", "entity", "value"),
    [
        # names: titles, cues, and a known given name with a known surname
        ("Referred to Dr. Okonkwo for a second opinion.", "PERSON", "Okonkwo"),
        ("Mrs Haddad called about the invoice.", "PERSON", "Haddad"),
        ("My name is Ingrid Solberg and I need a refund.", "PERSON", "Ingrid Solberg"),
        ("Patient: Rafael Quintero, 54.", "PERSON", "Rafael Quintero"),
        ("The forms were signed by her son Mateo yesterday.", "PERSON", "Mateo"),
        ("Please forward this to Jennifer Walsh before Friday.", "PERSON", "Jennifer Walsh"),
        ("Kind regards, Thomas A. Becker", "PERSON", "Thomas A. Becker"),
        ("患者李建国主诉头晕三天。", "PERSON", "李建国"),
        ("姓名：欧阳娜娜", "PERSON", "欧阳娜娜"),
        ("陈女士要求更换快递地址。", "PERSON", "陈"),
        ("请转告张志强明天上午复查。", "PERSON", "张志强"),
        # addresses
        ("She moved to 1420 Maple Grove Road, Apt 3B, Columbus, OH 43215 last year.", "ADDRESS",
         "1420 Maple Grove Road, Apt 3B, Columbus, OH 43215"),
        ("Ship it to 9 Quarry Lane, Bristol.", "ADDRESS", "9 Quarry Lane, Bristol"),
        ("Write to P.O. Box 4471 for the records.", "ADDRESS", "P.O. Box 4471"),
        ("Our office is at Lindenstraße 14, 10969 Berlin.", "ADDRESS",
         "Lindenstraße 14, 10969 Berlin"),
        ("患者现住上海市徐汇区漕溪北路120号5栋302室。", "ADDRESS",
         "上海市徐汇区漕溪北路120号5栋302室"),
        ("地址：成都市青羊区金沙小区7栋2单元1101室", "ADDRESS",
         "成都市青羊区金沙小区7栋2单元1101室"),
        # birth dates (a cue is what makes a date one)
        ("DOB: 07/22/1968, allergic to latex.", "DATE_OF_BIRTH", "07/22/1968"),
        ("Date of birth 3 February 1990.", "DATE_OF_BIRTH", "3 February 1990"),
        ("He was born on Nov. 5, 1949 in Ohio.", "DATE_OF_BIRTH", "Nov. 5, 1949"),
        ("出生日期：1976年11月30日", "DATE_OF_BIRTH", "1976年11月30日"),
        ("生日 1999-02-14", "DATE_OF_BIRTH", "1999-02-14"),
        # cued identifiers
        ("MRN: 004471235 admitted overnight.", "MEDICAL_RECORD_NUMBER", "004471235"),
        ("medical record number HX-55120", "MEDICAL_RECORD_NUMBER", "HX-55120"),
        ("住院号：2019008812", "MEDICAL_RECORD_NUMBER", "2019008812"),
        ("Member ID: QWE812334509", "HEALTH_PLAN_ID", "QWE812334509"),
        ("Medicare 5TG7-HN2-PK81 on file", "HEALTH_PLAN_ID", "5TG7-HN2-PK81"),
        ("医保卡号：3301029876", "HEALTH_PLAN_ID", "3301029876"),
        ("passport no. K4821930, expires 2031", "PASSPORT", "K4821930"),
        ("护照号码E71234509", "PASSPORT", "E71234509"),
        ("Driver's licence number B892-4410-7731", "DRIVERS_LICENSE", "B892-4410-7731"),
        ("DL# W3345120", "DRIVERS_LICENSE", "W3345120"),
        # phones, national and international
        ("Text me on 312.555.0147 please", "PHONE", "312.555.0147"),
        ("reach me at (646)555-0199", "PHONE", "(646)555-0199"),
        ("phone 6465550199 anytime", "PHONE", "6465550199"),
        ("call +14155550123 now", "PHONE", "+14155550123"),
        ("手机号15912345678，微信同号", "PHONE", "15912345678"),
        ("电话：139-1234-5678", "PHONE", "139-1234-5678"),
        ("联系+86 186 0000 1234", "PHONE", "+86 186 0000 1234"),
        ("前台座机0571-88776655", "PHONE", "0571-88776655"),
        ("UK mobile 07700 900461", "PHONE", "07700 900461"),
    ],
)  # fmt: skip
def test_detects(text: str, entity: str, value: str) -> None:
    assert (entity, value) in found(text)


@pytest.mark.parametrize(
    ("text", "entity", "value"),
    [
        ("card 5500.0055.5555.5559 declined", "CREDIT_CARD", "5500.0055.5555.5559"),
        ("card 4111  1111  1111  1111 declined", "CREDIT_CARD", "4111  1111  1111  1111"),
        ("卡号4111111111111111已冻结", "CREDIT_CARD", "4111111111111111"),
        ("iban gb82 west 1234 5698 7654 32 ok", "IBAN", "gb82 west 1234 5698 7654 32"),
        ("IBAN DE89-3704-0044-0532-0130-00.", "IBAN", "DE89-3704-0044-0532-0130-00"),
        ("my SSN is 078051120.", "US_SSN", "078051120"),
        ("social security number: 078-05-1120", "US_SSN", "078-05-1120"),
        ("id 110105 19491231 002X", "CN_RESIDENT_ID", "110105 19491231 002X"),
        ("mail josé.núñez@correo.es", "EMAIL", "josé.núñez@correo.es"),
        ("mail ana.lima [at] example [dot] org", "EMAIL", "ana.lima [at] example [dot] org"),
        ("call 212 – 555 – 0148", "PHONE", "212 – 555 – 0148"),
    ],
)
def test_old_entities_in_less_canonical_spellings(text: str, entity: str, value: str) -> None:
    assert (entity, value) in found(text)


@pytest.mark.parametrize(
    "text",
    [
        "Order #558120 ships on Monday.",
        "Take 500 mg twice daily; reduce to 250 mg after a week.",
        "Upgraded to version 4.12.7 and build 20231104.",
        "She is in room 412, bed 2.",
        "Follow-up appointment on 09/14/2025 at 10:30.",
        "Invoice 2024-88312 is overdue.",
        "Blood pressure 128/84, HbA1c 6.9%.",
        "The Apple Watch will not pair with Visual Studio Code installed.",
        "Please review the report. Thanks for the update.",
        "Will it rain in May? Grant access to the folder.",
        "订单号202405178812345已发货。",
        "复诊时间：2025年3月14日上午。每次口服250mg。",
        "患者转入12楼3床，继续观察。",
        "软件版本v2.3.1存在兼容问题。",
        "Tracking 1Z999AA10123456784 was delivered.",
        "The meeting is on 2025-01-07 in building 5.",
    ],
)
def test_look_alikes_survive(text: str) -> None:
    assert found(text) == []


def test_names_across_a_line_break_are_not_joined() -> None:
    # The detectors never look past a line break: the scan of the lines is the scan of
    # the text (routing relies on it).
    assert ("PERSON", "Okonkwo") in found("Dr. Okonkwo")
    assert found("Dr.\nOkonkwo") == []


def test_new_entities_are_redacted_in_every_mode() -> None:
    text = "Patient Rafael Quintero, DOB 07/22/1968, MRN 004471235."
    masked = Redactor(RedactionConfig(mode=RedactionMode.MASK)).redact_text(text)
    assert masked.text == "Patient [PERSON], DOB [DATE_OF_BIRTH], MRN [MEDICAL_RECORD_NUMBER]."
    pseudo = Redactor(RedactionConfig()).redact_text(text)
    assert pseudo.text == (
        "Patient <PERSON_1>, DOB <DATE_OF_BIRTH_1>, MRN <MEDICAL_RECORD_NUMBER_1>."
    )
    blocked = Redactor(RedactionConfig(per_entity_mode={"PERSON": RedactionMode.BLOCK}))
    assert blocked.redact_text(text).blocked == {"PERSON"}
    assert REDACTOR.contains_pii(text) == ["PERSON", "DATE_OF_BIRTH", "MEDICAL_RECORD_NUMBER"]
    assert REDACTOR.scan_parts([text, "住院号：2019008812"]) == {
        "PERSON": 1, "DATE_OF_BIRTH": 1, "MEDICAL_RECORD_NUMBER": 2,
    }  # fmt: skip


# --- properties ------------------------------------------------------------------------

_WORDS = ["the", "Patient", "patient", "Dr.", "Mr", "name", "is", "DOB", "born", "MRN", ":",
          "#", "John", "Smith", "Maria", "García", "Street", "Ave", "Main", "12", "4111",
          "1111", "-", ".", ",", "  ", "\n", "\t", "王", "小明", "先生", "患者", "住址", "北京市",
          "路", "88", "号", "出生日期", "1985年3月14日", "03/14/1985", "138", "0013", "8000",
          "+86", "(", ")", "passport", "E12345678", "医保", "Order", "500", "mg",
          "v2.3.1"]  # fmt: skip
texts = st.lists(st.sampled_from(_WORDS), max_size=30).map(" ".join) | st.text(max_size=80)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_findings_are_in_range_sorted_and_disjoint(text: str) -> None:
    spans = REDACTOR.detect(text)
    assert all(0 <= s.start < s.end <= len(text) for s in spans)
    assert all(a.end <= b.start for a, b in pairwise(spans))


# Values of each new entity with the context that identifies it, planted between
# arbitrary prose: each must come out wholly covered by a finding of its entity.
_PLANTS = [
    ("PERSON", "Dr. ", "Okonkwo"),
    ("PERSON", "patient ", "Rafael Quintero"),
    ("PERSON", "", "Jennifer Walsh"),
    ("PERSON", "患者", "李建国"),
    ("ADDRESS", "", "1420 Maple Grove Road"),
    ("ADDRESS", "住址：", "北京市朝阳区建国路88号"),
    ("DATE_OF_BIRTH", "DOB ", "07/22/1968"),
    ("DATE_OF_BIRTH", "出生日期：", "1976年11月30日"),
    ("MEDICAL_RECORD_NUMBER", "MRN: ", "004471235"),
    ("HEALTH_PLAN_ID", "member ID ", "QWE812334509"),
    ("PASSPORT", "passport ", "K4821930"),
    ("DRIVERS_LICENSE", "driver's license ", "B892-4410-7731"),
    ("PHONE", "", "138-0013-8000"),
]
prose = st.text(alphabet=st.sampled_from("abcdefghij klmnop,;!?"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_PLANTS), prose, prose)
def test_a_value_planted_in_prose_is_found(
    plant: tuple[str, str, str], before: str, after: str
) -> None:
    entity, cue, value = plant
    # Prose is lower-case letters and punctuation: a word boundary on both sides.
    text = f"{before} {cue}{value} {after}"
    start = len(before) + 1 + len(cue)
    spans = REDACTOR.detect(text)
    assert any(
        s.entity == entity and s.start <= start and start + len(value) <= s.end for s in spans
    ), (text, spans)
