"""Checksum and plausibility checks that turn pattern candidates into findings.

Regular expressions only find things shaped like an identifier; these functions decide
whether the shape is a real one, which is what keeps order numbers, dates and random digit
runs from being redacted.
"""

from __future__ import annotations

from datetime import date
from typing import Final

__all__ = [
    "IBAN_LENGTHS",
    "cn_resident_id_valid",
    "iban_valid",
    "luhn_valid",
    "us_ssn_valid",
]


def luhn_valid(digits: str) -> bool:
    """True when a string of at least two ASCII digits passes the Luhn (mod 10) check."""
    if len(digits) < 2:
        return False
    total = 0
    # Double every second digit counting from the right, i.e. the positions whose index
    # has the opposite parity of the length.
    parity = len(digits) % 2
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        if d < 0 or d > 9:
            return False
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Lengths from the SWIFT IBAN registry; a country outside it is not accepted because the
# length check is what stops a run of letters and digits that happens to pass mod 97.
IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def iban_valid(compact: str) -> bool:
    """True for an IBAN without spaces whose country length and mod-97 check are right."""
    expected = IBAN_LENGTHS.get(compact[:2])
    if expected is None or len(compact) != expected:
        return False
    if not (compact[2:4].isdigit() and compact.isascii() and compact.isalnum()):
        return False
    rearranged = compact[4:] + compact[:4]
    # int(ch, 36) maps 0-9 to themselves and A-Z to 10-35, exactly the IBAN letter encoding.
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(numeric) % 97 == 1


def us_ssn_valid(area: str, group: str, serial: str) -> bool:
    """True when an SSN's parts could have been issued (SSA rules since 2011)."""
    a = int(area)
    return a not in (0, 666) and a < 900 and int(group) != 0 and int(serial) != 0


_CN_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_CHECK: Final = "10X98765432"
# First two digits: province-level division codes of GB/T 2260.
_CN_PROVINCES: Final = frozenset({
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36",
    "37", "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62",
    "63", "64", "65", "71", "81", "82", "91",
})  # fmt: skip


def cn_resident_id_valid(value: str, today: date | None = None) -> bool:
    """True for an 18-character GB 11643 resident ID: province, birth date and check char."""
    if len(value) != 18 or not value[:17].isdigit():
        return False
    if value[:2] not in _CN_PROVINCES:
        return False
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    if born.year < 1900 or born > (today or date.today()):
        return False
    total = sum(int(ch) * w for ch, w in zip(value[:17], _CN_WEIGHTS, strict=True))
    return _CN_CHECK[total % 11] == value[17].upper()
