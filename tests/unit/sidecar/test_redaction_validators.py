"""Checksums and issuing rules that separate real identifiers from look-alikes."""

from __future__ import annotations

from datetime import date

import pytest

from clawdbot_sidecar.redaction import cn_resident_id_valid, iban_valid, luhn_valid, us_ssn_valid


@pytest.mark.parametrize(
    "digits",
    [
        "4111111111111111",  # Visa test number
        "5500005555555559",  # Mastercard
        "2223003122003222",  # Mastercard 2-series
        "378282246310005",  # Amex, odd length
        "6011111111111117",  # Discover
        "79927398713",  # the textbook example
    ],
)
def test_luhn_accepts_valid_numbers(digits: str) -> None:
    assert luhn_valid(digits)


@pytest.mark.parametrize(
    "digits", ["4111111111111112", "378282246310006", "79927398710", "0", "", "41111x1111111111"]
)
def test_luhn_rejects_wrong_check_digit_and_junk(digits: str) -> None:
    assert not luhn_valid(digits)


@pytest.mark.parametrize(
    "iban",
    [
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
        "CH9300762011623852957",
        "NO9386011117947",  # shortest in the registry
    ],
)
def test_iban_accepts_registry_examples(iban: str) -> None:
    assert iban_valid(iban)


@pytest.mark.parametrize(
    ("iban", "why"),
    [
        ("DE89370400440532013001", "mod-97 fails"),
        ("GB82WEST12345698765433", "mod-97 fails"),
        ("DE8937040044053201300", "too short for DE"),
        ("XX89370400440532013000", "unknown country"),
        ("DEAB370400440532013000", "check digits not digits"),
        ("DE89 3704 0044 0532 0130 00", "spaces are the caller's to remove"),
    ],
)
def test_iban_rejects(iban: str, why: str) -> None:
    assert not iban_valid(iban), why


@pytest.mark.parametrize(
    ("area", "group", "serial"), [("123", "45", "6789"), ("899", "01", "0001")]
)
def test_ssn_accepts_issuable_numbers(area: str, group: str, serial: str) -> None:
    assert us_ssn_valid(area, group, serial)


@pytest.mark.parametrize(
    ("area", "group", "serial"),
    [
        ("000", "12", "3456"),  # area 000 never issued
        ("666", "12", "3456"),  # area 666 never issued
        ("900", "12", "3456"),  # 900-999 are ITINs, not SSNs
        ("999", "12", "3456"),
        ("123", "00", "4567"),  # group 00
        ("123", "45", "0000"),  # serial 0000
    ],
)
def test_ssn_rejects_unissuable_numbers(area: str, group: str, serial: str) -> None:
    assert not us_ssn_valid(area, group, serial)


@pytest.mark.parametrize(
    "value",
    ["11010519491231002X", "11010519491231002x", "44030419900307123X", "310115200112314565"],
)
def test_cn_resident_id_accepts_valid_ids(value: str) -> None:
    assert cn_resident_id_valid(value)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("110105194912310021", "wrong check character"),
        ("310115200112314564", "wrong check digit"),
        ("990105194912310023", "no such province"),
        ("11010519491331002X", "month 13"),
        ("110105194902300029", "30 February"),
        ("11010518991231002X", "born before 1900"),
        ("11010519491231002", "17 characters"),
    ],
)
def test_cn_resident_id_rejects(value: str, why: str) -> None:
    assert not cn_resident_id_valid(value), why


def test_cn_resident_id_rejects_birth_dates_in_the_future() -> None:
    born_2030 = "110105203001011231"  # checksum right, birth date 2030-01-01
    assert cn_resident_id_valid(born_2030, today=date(2031, 1, 1))
    assert not cn_resident_id_valid(born_2030, today=date(2029, 12, 31))
