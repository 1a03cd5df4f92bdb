# ruff: noqa: RUF001, RUF003 (Chinese punctuation and typographic dashes are what we match)
"""Detectors of people's identifiers, English and Chinese: names, street addresses, dates
of birth, medical record, health-plan, passport and driver's licence numbers.

They follow the same model as `detectors.py`: a compiled pattern, prefilter needles, and a
check that confirms a match and picks the span to redact. Three kinds of evidence:

- a context cue the pattern itself opens with ("MRN", "date of birth", "patient",
  "Mr.", "患者", "病历号", a title after a Chinese surname), which is what tells a medical
  record number from an order number and a birth date from an appointment;
- gazetteers (`gazetteer.py`): a capitalised pair is a name without any cue when the first
  word is a known given name and the last a known surname, neither a common word; a
  Chinese surname followed by two characters common in given names is a name too;
- shapes: a street address is a house number, capitalised words and a street-type word
  ("Street", "Ave", "路 ... 号").

No pattern reaches across a line break and no check looks beyond the current line, so a
text's findings are those of its lines (the engine's `scan_parts` relies on it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from typing import Final

from . import gazetteer as gz
from .validators import us_ssn_valid

__all__ = ["DIGIT_CHECKED", "line_prefix", "person_tokens", "valid_date"]

Check = Callable[[str, "re.Match[str]"], tuple[int, int] | None]

# --- shared pieces ---------------------------------------------------------------------

_UP: Final = "A-ZÀ-ÖØ-Þ"
_LO: Final = "a-zß-öø-ÿ\u0100-\u024f\u1e00-\u1eff"
# One name word: "Smith", "O'Brien", "McDonald", "Smith-Jones", "José".
_TOK: Final = rf"(?:Mc|Mac|O['’]|D['’])?[{_UP}][{_LO}]+(?:-[{_UP}][{_LO}]+)?"
_PARTICLE: Final = r"(?:van|von|der|den|de|del|della|da|di|du|la|le|bin|binti|ibn|al|el|dos|das)"
# Up to four name words, initials ("John F. Kennedy") and particles ("Maria de la Cruz").
_NAME: Final = (
    rf"{_TOK}(?:[ \t]+(?:[{_UP}]\.(?=[ \t]+[{_UP}])|(?:{_PARTICLE}[ \t]+){{1,2}}{_TOK}"
    rf"|{_TOK})){{0,3}}"
)
_NAME_PART: Final = re.compile(rf"{_TOK}|[{_UP}]\.|{_PARTICLE}(?![{_LO}])")
_CJK: Final = "\u4e00-\u9fff"
_CN_SURNAME: Final = "(?:" + "|".join(gz.CN_COMPOUND_SURNAMES) + f"|[{gz.CN_SURNAMES}])"
_CN_NUM: Final = "0-9一二三四五六七八九十百零〇"

# Characters that never continue a Chinese given name (particles, verbs and time words
# that follow a cue: "患者于今日", "姓名不详").
_CN_STOP_CHARS: Final = frozenset(
    "的了是在有和与及或因于为被把从向对今昨每本该某其此这那不无未已将曾自由至到说诉称述"
    "男女年月日岁前后上下左右中内外一二三四五六七八九十个位名号等"
    # 明 (tomorrow) is left out: it is one of the commonest given-name characters.
)

# Words right before a number that make it an order, ticket or product number, not a
# phone number (the line's text before the number, lower case, ends with one).
_ID_WORDS: Final = re.compile(
    r"(?:order|invoice|tracking|ticket|ref|reference|receipt|transaction|confirmation|serial|"
    r"s/n|sku|part|model|batch|lot|item|booking|case|account|acct|订单|单号|运单|快递|发票|"
    r"流水|交易|编号|批号|型号|序列号|货号|工单)[ \t]*(?:no\.?|number|num|id|#|号|号码)?[ \t]*"
    r"[:#=：\-]?[ \t]*\Z"
)


def line_prefix(text: str, pos: int, width: int) -> str:
    """Up to `width` characters before `pos`, not reaching back past a line break."""
    start = max(0, pos - width)
    newline = text.rfind("\n", start, pos)
    return text[newline + 1 if newline != -1 else start : pos]


def _after_id_word(text: str, pos: int) -> bool:
    return _ID_WORDS.search(line_prefix(text, pos, 32).lower()) is not None


def _digits(s: str) -> int:
    return sum(c.isdigit() for c in s)


# --- dates -----------------------------------------------------------------------------

_MONTHS: Final[dict[str, int]] = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8,
    "sep": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
_MONTH: Final = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DAY: Final = r"[0-9]{1,2}(?:st|nd|rd|th)?"
_DATE: Final = (
    r"(?:[0-9]{4}[/.\-][0-9]{1,2}[/.\-][0-9]{1,2}"
    r"|[0-9]{1,2}[/.\-][0-9]{1,2}[/.\-](?:[0-9]{4}|[0-9]{2})"
    r"|[0-9]{4}年[0-9]{1,2}月(?:[0-9]{1,2}[日号]?)?"
    rf"|(?i:{_MONTH})\.?[ \t]+{_DAY},?[ \t]+[0-9]{{4}}"
    rf"|{_DAY}[ \t]+(?:of[ \t]+)?(?i:{_MONTH})\.?,?[ \t]+[0-9]{{4}}"
    r"|(?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01]))"
    r"(?![0-9])"
)
_NUMBERS: Final = re.compile(r"[0-9]+")
_MONTH_WORD: Final = re.compile(_MONTH, re.IGNORECASE)


def valid_date(value: str, today: date | None = None) -> bool:
    """True when `value` (one of the date spellings above) can be a date of birth: a real
    day between 1900 and today, in some reading of day and month order."""
    now = today or date.today()
    nums = [int(n) for n in _NUMBERS.findall(value)]
    month_word = _MONTH_WORD.search(value)
    readings: list[tuple[int, int, int]] = []  # (year, month, day)
    if month_word is not None:
        month = _MONTHS[month_word.group()[:3].lower()]
        if len(nums) == 2:
            day, year = (nums[0], nums[1]) if nums[1] > 31 else (nums[1], nums[0])
            readings.append((year, month, day))
    elif len(nums) == 1 and len(str(nums[0])) == 8:
        n = str(nums[0])
        readings.append((int(n[:4]), int(n[4:6]), int(n[6:])))
    elif len(nums) == 2 and "年" in value:
        readings.append((nums[0], nums[1], 1))
    elif len(nums) == 3:
        a, b, c = nums
        if a > 31:
            readings.append((a, b, c))
        else:
            year = c if c > 99 else (1900 + c if c > now.year % 100 else 2000 + c)
            readings += [(year, a, b), (year, b, a)]
    for year, month, day in readings:
        try:
            born = date(year, month, day)
        except ValueError:
            continue
        if born.year >= 1900 and born <= now:
            return True
    return False


def _check_dob(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    return m.span("v") if valid_date(m["v"]) else None


_DOB_EN: Final = re.compile(
    r"(?=[DdBb])(?<![A-Za-z])(?i:d\.?o\.?b\.?|date[ \t]+of[ \t]+birth|birth[ \t]*date|birthday"
    r"|born(?:[ \t]+on)?)"
    r"[ \t]*(?:[:#=\-–(]|is|was|of)?[ \t]*(?:on[ \t]+)?(?P<v>" + _DATE + ")"
)
_DOB_ZH: Final = re.compile(
    r"(?:出生日期|出生年月日|出生年月|出生于|出生在|出生时间|出生|生日|生于)[：: \t]{0,3}"
    r"(?:是|为)?[ \t]*(?P<v>" + _DATE + ")"
)

# --- identifiers that follow a cue -----------------------------------------------------

# The value after a cue: letters and digits, with single dashes, dots or spaces inside
# (the check decides how many space-separated groups belong to it).
_ID_VALUE: Final = r"(?P<v>[A-Za-z0-9](?:[A-Za-z0-9]|[\-./ ](?=[A-Za-z0-9])){3,30})"
_EN_ID_SEP: Final = (
    r"[ \t]*(?:\((?:[A-Za-z]{1,4})\)[ \t]*)?"  # "MRN (internal)": a short note in brackets
    r"(?:(?i:number|num|no|nr|id|#)\.?[ \t]*)?(?:[:#=\-–]|(?i:is|was))?[ \t]*#?[ \t]*"
)
_ZH_ID_SEP: Final = r"[ \t]*(?:号码|号|编号|ID)?[：:#＃ \t]*(?:是|为)?[ \t]*"


def _id_check(min_digits: int, min_len: int = 5) -> Check:
    def check(text: str, m: re.Match[str]) -> tuple[int, int] | None:
        start = m.start("v")
        groups = m["v"].split(" ")
        value = groups[0]
        # Later space-separated groups belong to the value only while they look like its
        # continuation ("943 476 5919"), not like the next word ("12345 was admitted").
        for group in groups[1:]:
            if group.isdigit() or (any(c.isdigit() for c in group) and group.isupper()):
                value += " " + group
            else:
                break
        value = value.rstrip(".-/")
        if len(value) < min_len or _digits(value) < min_digits:
            return None
        return start, start + len(value)

    return check


def _cued(
    en: str | None, zh: str | None, first: str = ""
) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None]:
    # A lookahead on the cues' first letters lets the search skip the other positions.
    lead = f"(?=[{first}{first.upper()}])" if first else ""
    en_re = (
        re.compile(rf"{lead}(?<![A-Za-z])(?i:{en})(?![A-Za-z]){_EN_ID_SEP}{_ID_VALUE}")
        if en
        else None
    )
    zh_re = re.compile(rf"(?:{zh}){_ZH_ID_SEP}{_ID_VALUE}") if zh else None
    return en_re, zh_re


_MRN_EN, _MRN_ZH = _cued(
    r"mrn|mr#|medical[ \t]+record(?:s)?(?:[ \t]+(?:number|no|#))?|med[ \t]+rec"
    r"|chart(?:[ \t]+(?:number|no|#))?|patient[ \t]+(?:id|number|no|#)"
    r"|hospital[ \t]+(?:number|no|id)|health[ \t]+record(?:[ \t]+(?:number|no))?"
    r"|record[ \t]+(?:number|no)|unit[ \t]+number",
    r"病历号码|病历号|病历编号|病案号|住院号|门诊号|就诊号|就诊卡号|病人编号|患者编号|患者ID|病人ID",
    "mcphru",
)
_HPID_EN, _HPID_ZH = _cued(
    r"member(?:ship)?[ \t]+(?:id|number|no|#)|subscriber[ \t]+(?:id|number|no)"
    r"|policy(?:[ \t]+(?:number|no|id|#))|insurance(?:[ \t]+(?:id|number|no|card|#))"
    r"|health[ \t]+(?:plan|insurance|card)(?:[ \t]+(?:id|number|no))?|plan[ \t]+(?:id|number)"
    r"|group[ \t]+(?:number|no)|medicare(?:[ \t]+(?:number|id|card|no))?"
    r"|medicaid(?:[ \t]+(?:number|id|card|no))?|mbi|beneficiary[ \t]+(?:id|number)"
    r"|nhs[ \t]+(?:number|no)|insured[ \t]+id",
    r"医保卡号|医保号码|医保号|医保账号|医保卡|社保卡号|社保号码|社保号|社保卡|医疗保险号|参保号|保单号|保险单号",
    "mspihgnb",
)
_PASSPORT_EN, _PASSPORT_ZH = _cued(r"passport", r"护照号码|护照号|护照|通行证号码|通行证号", "p")
_DL_EN, _DL_ZH = _cued(
    r"driver['’]?s?[ \t]+licen[cs]e|driving[ \t]+licen[cs]e|licen[cs]e[ \t]+(?:number|no|#)"
    r"|(?-i:DLN?)",
    r"驾驶证号码|驾驶证号|驾驶证|驾照号码|驾照号|驾照|驾驶执照号",
    "dl",
)

# Patterns whose check wants digits in the value (`_id_check`): a text without an ASCII
# digit holds none of their findings.
DIGIT_CHECKED: Final[frozenset[re.Pattern[str]]] = frozenset(
    p
    for p in (_MRN_EN, _MRN_ZH, _HPID_EN, _HPID_ZH, _PASSPORT_EN, _PASSPORT_ZH, _DL_EN, _DL_ZH)
    if p is not None
)

# Medicare Beneficiary Identifiers have a fixed shape that order numbers rarely share:
# C A AN N A AN N A A N N (no S, L, O, I, B, Z), optionally dashed 4-3-4.
_MBI_A: Final = "AC-HJKMNP-RT-Y"
_MBI: Final = re.compile(
    rf"[1-9](?<![A-Za-z0-9\-][1-9])[{_MBI_A}][{_MBI_A}0-9][0-9]-?[{_MBI_A}][{_MBI_A}0-9][0-9]"
    rf"-?[{_MBI_A}]{{2}}[0-9]{{2}}(?![A-Za-z0-9]|-[A-Za-z0-9])"
)

# --- names -----------------------------------------------------------------------------


def person_tokens(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The name words of `text[start:end]` up to the first one that is a common word."""
    out: list[tuple[int, int]] = []
    for t in _NAME_PART.finditer(text, start, end):
        word = t.group()
        if word.lower() in gz.NAME_STOP_WORDS:
            break
        out.append(t.span())
    # A name ends on a name word, not on an initial or a particle.
    while out and (text[out[-1][1] - 1] == "." or text[out[-1][0]].islower()):
        out.pop()
    return out


def _known(word: str) -> bool:
    return gz.is_given_name(word) or gz.is_surname(word)


# English names: one pass over capitalised word runs (the search skips to capitals), and
# a check that reads the words before the run on its line. A run is a name when
# - a title precedes it ("Dr. Okafor", "Mrs. Li"), or a cue that says so ("my name is",
#   "name:", "signed");
# - another cue precedes it ("patient", "daughter", "Dear", "spoke with") and one of its
#   words is a known given name or surname;
# - with no cue: it opens with a known given name and ends with a known surname (or a
#   surname spelled with letters English doesn't use: "Dương", "Kołłątaj"), or it is a
#   known given name followed by a verb people are the subject of ("Maria says ...").
_REST: Final = rf"(?:(?<=[OD])['’][{_UP}]|(?<=M)a?c[{_UP}])?[{_LO}]+(?:-[{_UP}][{_LO}]+)?"
_PERSON_VERB_RE: Final = (
    r"says|said|reports|reported|states|stated|denies|denied|complains|complained|called"
    r"|asked|presented|presents|came|comes|visited|arrived|returned|agreed|declined"
    r"|confirmed|wants|wanted|needs|needed|has|had|is|was|will|would|can|could|did|does"
    r"|feels|felt|noted|notes|mentioned|explained|requested|lives|lived|works|worked"
)
_PERSON_VERBS: Final = frozenset(_PERSON_VERB_RE.split("|"))
# Candidates, cheapest first: a run of two or more capitalised words anywhere; one word
# after a lower-case word, a comma or colon, or an abbreviation with a full stop ("Dr.");
# one word before a verb people are the subject of. A single capitalised word opening a
# sentence is none of these, which keeps most of them from reaching the check.
_PERSON_EN: Final = re.compile(
    rf"[{_UP}](?<![A-Za-z0-9_'’.@\-][{_UP}])"
    rf"(?:{_REST}(?:[ \t]+(?:[{_UP}]\.(?=[ \t]+[{_UP}])|(?:{_PARTICLE}[ \t]+){{1,2}}{_TOK}"
    rf"|{_TOK})){{1,3}}"
    rf"|(?:(?<=[a-z,:;)][ \t][{_UP}])|(?<=[a-z,:;)][ \t]{{2}}[{_UP}])"
    rf"|(?<=[A-Z][a-z]\.[ \t][{_UP}])|(?<=[A-Z][a-z]{{2}}\.[ \t][{_UP}])"
    rf"|(?<=[A-Z][a-z]{{3}}\.[ \t][{_UP}])){_REST}"
    rf"|{_REST}(?=[ \t]+(?:{_PERSON_VERB_RE})(?![a-z])))(?![{_LO}0-9_@])"
)
_TITLES: Final = frozenset(
    ["mr", "mrs", "ms", "mx", "miss", "mister", "madam", "mme", "mlle", "dr", "prof",
     "professor", "sir", "dame", "rev", "herr", "frau", "sr", "sra", "srta"]
)  # fmt: skip
_STRONG_CUES: Final = frozenset(
    ["my name is", "my name's", "name is", "full name", "legal name", "maiden name",
     "patient name", "first name", "last name", "family name", "given name", "client name",
     "customer name", "contact name", "named", "signed", "signature", "i am called"]
)  # fmt: skip
# Roles a name follows directly ("daughter Giulietta", "patient Okonkwo"): as strong as
# a title for the word right after them.
_ROLE_CUES: Final = frozenset(
    ["patient", "pt", "caller", "cardholder", "account holder", "policy holder",
     "policyholder", "beneficiary", "insured", "subscriber", "applicant", "guarantor",
     "tenant", "next of kin", "emergency contact", "contact person", "spouse", "wife",
     "husband", "son", "daughter", "mother", "father", "brother", "sister", "guardian",
     "mom", "dad", "physician", "surgeon", "nurse", "therapist", "pharmacist", "dear",
     "attn", "c/o", "referred by", "seen by", "treated by", "spoke with", "spoke to",
     "talked to", "met with", "reach", "named", "called"]
)  # fmt: skip
_CUES: Final = frozenset(
    ["patient", "pt", "called", "sincerely", "regards", "cheers", "thanks", "thank you",
     "dear", "attn", "attention", "c/o", "caller", "cardholder", "account holder",
     "policy holder", "policyholder", "beneficiary", "insured", "subscriber", "applicant",
     "guarantor", "employee", "tenant", "next of kin", "emergency contact", "contact person",
     "contact", "client", "customer", "spouse", "wife", "husband", "son", "daughter",
     "mother", "father", "brother", "sister", "guardian", "parent", "mom", "dad", "partner",
     "referred by", "seen by", "treated by", "spoke with", "spoke to", "talked to",
     "met with", "hi", "hello", "hey", "i am", "i'm", "i’m", "this is", "physician",
     "surgeon", "nurse", "doctor", "provider", "therapist", "pharmacist", "technician",
     "cc", "reach"]
)  # fmt: skip
# Cues that only count before a colon ("Name: ...", "From: ...").
_COLON_CUES: Final = frozenset(["name", "cc", "contact"])
_PREFIX_WIDTH: Final = 40
_WORD: Final = re.compile(r"[^\s]+")


def _cue_before(text: str, start: int) -> str | None:
    """'title', 'strong' or 'cue' for the words right before `start` on its line."""
    prefix = line_prefix(text, start, _PREFIX_WIDTH)
    stripped = prefix.rstrip(" \t,:-–(")
    colon = ":" in prefix[len(stripped) :]
    words = [w.strip('.,;()"“”') for w in stripped.lower().split()[-3:]]
    if not words:
        return None
    if (
        words[-1] in _TITLES
        and stripped[-len(words[-1]) - (stripped.endswith(".")) :][:1].isupper()
    ):
        return "title"
    for n in (3, 2, 1):
        phrase = " ".join(words[-n:])
        if phrase in _STRONG_CUES or phrase in _ROLE_CUES:
            return "strong"
        if phrase in _COLON_CUES and colon:
            return "strong" if phrase == "name" else "cue"
        if phrase in _CUES and phrase not in _COLON_CUES:
            return "cue"
    return None


def _check_person_en(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    tokens = person_tokens(text, m.start(), m.end())
    if not tokens:
        # After a title a surname that is also a word is still one ("Mrs. Brown").
        first = _NAME_PART.match(text, m.start())
        if first is None or not gz.is_surname_word(first.group()):
            return None
        if _cue_before(text, m.start()) != "title":
            return None
        return first.span()
    if tokens[0][0] != m.start():
        return None
    start, end = tokens[0][0], tokens[-1][1]
    words = [text[a:b] for a, b in tokens if text[a].isupper() and text[b - 1] != "."]
    cue = _cue_before(text, start)
    if cue in ("title", "strong"):
        return start, end
    if cue == "cue" and any(_known(w) for w in words):
        return start, end
    if len(words) >= 2 and gz.is_given_name(words[0]):
        last = words[-1]
        if gz.is_surname(last) or (not last.isascii() and last.lower() not in gz.NAME_STOP_WORDS):
            middles = words[1:-1]
            if all(_known(w) for w in middles):
                return start, end
    if len(words) == 1 and gz.is_given_name(words[0]):
        after = text[end : end + 16].split(None, 1)
        if after and after[0].strip(".,;") in _PERSON_VERBS:
            return start, end
    return None


_PERSON_ZH_CUE: Final = re.compile(
    r"(?:患者|病人|病患|姓名|名字|联系人|家属|客户|用户|我叫|我是|名叫|叫做|本人|申请人|投保人"
    r"|被保险人|持卡人|收件人|收货人|寄件人|负责人|主治医生|主治医师|医生|医师|护士|经办人|签名"
    r"|签字|配偶|丈夫|妻子|儿子|女儿|父亲|母亲|监护人|紧急联系人)[：: \t]{0,2}"
    rf"(?P<name>{_CN_SURNAME}[{_CJK}]{{1,2}})"
)


def _check_zh_cue(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    start, end = m.span("name")
    value = m["name"]
    given_from = 2 if value[:2] in gz.CN_COMPOUND_SURNAMES else 1
    given = value[given_from:]
    if not given or given[0] in _CN_STOP_CHARS:
        return None
    # The second given-name character is only kept when it is a usual one: the pattern
    # takes two, and "王明今天" has a one-character given name.
    if len(given) == 2 and (given[1] not in gz.CN_GIVEN_CHARS or given[1] in _CN_STOP_CHARS):
        end -= 1
    return start, end


_CN_TITLES: Final = (
    "先生|女士|小姐|医生|大夫|老师|护士|教授|主任|经理|同志|阿姨|师傅|同学|律师|总监|院长|太太|夫人"
)
_PERSON_ZH_TITLE: Final = re.compile(rf"(?P<name>{_CN_SURNAME}[{_CJK}]{{0,2}}?)(?:{_CN_TITLES})")
# Characters after which a surname-and-title pair is no name ("这位先生", "向医生": "to the
# doctor"); a pair after them needs a given name too.
_CN_NOT_BEFORE_TITLE: Final = frozenset("向对找给跟和与请问位名个的是")


def _check_zh_title(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    start, end = m.span("name")
    value = m["name"]
    if any(c in _CN_STOP_CHARS for c in value[1:]):
        return None
    surname_only = len(value) == 1 or value in gz.CN_COMPOUND_SURNAMES
    if surname_only and value in _CN_NOT_BEFORE_TITLE:
        return None
    return start, end


_PERSON_ZH_UNCUED: Final = re.compile(
    rf"(?:{'|'.join(gz.CN_COMPOUND_SURNAMES)}|[{gz.CN_UNCUED_SURNAMES}])"
    rf"[{''.join(sorted(gz.CN_GIVEN_CHARS))}]{{2}}"
)
# A name without a cue must not be the tail of a longer word: the character before it is
# not Chinese, or a function word that separates phrases.
_CN_SEPARATING: Final = frozenset(
    "和与跟及同给向对由让叫请找把被是为在打告诉知问"  # function words
    "、，。：；！？“”（）《》 "  # punctuation
)


# Two-character names ("王超") need more: a usual given-name character, and a character
# after them that follows names (punctuation, a verb, a time word).
_PERSON_ZH_SHORT: Final = re.compile(
    rf"[{gz.CN_SURNAMES}][{''.join(sorted(gz.CN_GIVEN_CHARS))}]"
    r"(?=[。，、；：！？,.;:!?）)]|说|来|去|今|昨|反|要|陪|的|在|是|也|已|都|表|称|打|让|问|和|与|$)"
)


def _check_zh_short(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    start = m.start()
    if start > 0:
        before = text[start - 1]
        if "\u4e00" <= before <= "\u9fff" and before not in _CN_SEPARATING:
            return None
    return m.span()


def _check_zh_uncued(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    start = m.start()
    if start > 0:
        before = text[start - 1]
        if "\u4e00" <= before <= "\u9fff" and before not in _CN_SEPARATING:
            return None
    value = m.group()
    if value[:2] in gz.CN_COMPOUND_SURNAMES:
        return m.span()
    return m.span() if not any(c in _CN_STOP_CHARS for c in value[1:]) else None


# --- addresses -------------------------------------------------------------------------

_STREET_WORD: Final = rf"(?:[{_UP}][{_LO}]+\.?|[0-9]{{1,3}}(?:st|nd|rd|th)|[A-Z]{{1,3}}\.?)"
_ADDRESS_EN: Final = re.compile(
    r"[0-9](?<![0-9A-Za-z_.,:/\-][0-9])[0-9]{0,5}[A-Za-z]?(?:[\-/][0-9]{1,5}[A-Za-z]?)?,?"
    rf"(?:[ \t]+{_STREET_WORD}){{2,6}}"
)
_STREET_PARTS: Final = re.compile(rf"{_STREET_WORD}")
_UNIT: Final = (
    r"(?:,?[ \t]*(?:Apt|Apartment|Suite|Ste|Unit|Flat|Fl|Floor|Rm|Room|Bldg|Building|#)\.?"
    r"[ \t]*#?[A-Za-z0-9\-]{1,6}(?![A-Za-z0-9]))?"
)
_CITY: Final = (
    rf"[{_UP}][{_LO}]+(?:-[A-Za-z][{_LO}]*)*(?:[ \t]+[{_UP}][{_LO}]+(?:-[A-Za-z][{_LO}]*)*){{0,2}}"
)
_POSTCODE: Final = (
    r"(?:[0-9]{5}(?:-[0-9]{4})?|[A-Z]{1,2}[0-9][A-Z0-9]?[ \t]?[0-9][A-Z]{2}"
    r"|[A-Z][0-9][A-Z][ \t]?[0-9][A-Z][0-9])(?![A-Za-z0-9])"
)
_ADDRESS_TAIL: Final = re.compile(
    rf"(?:[ \t]+(?:N|S|E|W|NE|NW|SE|SW)\.?(?![A-Za-z]))?{_UNIT}"
    rf"(?:,[ \t]*{_CITY}(?:,?[ \t]+(?:[A-Z]{{2}}|{_CITY}))?(?:,?[ \t]+{_POSTCODE})?)?"
)


def _check_address_en(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    words = list(_STREET_PARTS.finditer(text, m.start(), m.end()))
    # The street-type word closes the street name: "12 Park Avenue", not "12 Park".
    for i in range(len(words) - 1, 0, -1):
        if words[i].group().rstrip(".").lower() in gz.STREET_SUFFIXES:
            end = words[i].end()
            break
    else:
        return None
    tail = _ADDRESS_TAIL.match(text, end)
    if tail is not None:
        end = tail.end()
    return m.start(), end


# Continental spelling: the street word first or fused, the number after it
# ("Kastanienallee 12", "Calle Mayor 5", "Rue de la Paix 8").
_ADDRESS_EU: Final = re.compile(
    rf"(?<![A-Za-z])(?:[{_UP}][{_LO}]*(?:-[{_UP}][{_LO}]+)*-?(?:straße|strasse|str\.|allee"
    rf"|Allee|platz|Platz|gasse|Gasse|ring|Ring|weg|Weg|damm|laan|straat|gracht|plein|hof|pad"
    rf"|steeg|dreef|kade|singel|gatan|gata|gade|veien)"
    rf"|(?:Calle|Avenida|Rua|Via|Viale|Piazza|Corso|Rue|Chemin|Carrer|Paseo|Plaza|Ulica|ul\."
    rf"|Rambla|Camino|Ronda|Travesía|Avinguda|Praça|Largo|Travessa|Alameda|Vicolo)"
    rf"(?:[ \t]+(?:[a-z]{{1,3}}|[{_UP}][{_LO}]+)){{1,4}}),?[ \t]+[0-9]{{1,4}}[a-z]?(?![0-9])"
    rf"(?:,[ \t]*[0-9]{{4,5}}[ \t]*(?:[A-Z]{{2}}[ \t]+)?{_CITY})?"
)
# French and Spanish order: number first, the street type in lower case ("26, rue Peltier").
_ADDRESS_FR: Final = re.compile(
    rf"[0-9](?<![0-9A-Za-z_.,:/\-][0-9])[0-9]{{0,3}}(?:bis|ter)?,?[ \t]+(?:rue|chemin|avenue"
    rf"|boulevard|bd|place|impasse|allée|quai|route|cours|passage|calle|carrer|rambla)[ \t]+"
    rf"(?:(?:de|du|des|la|le|les|del|d['’])[ \t]*)*{_CITY}"
    rf"(?:,[ \t]*[0-9]{{4,5}}[ \t]+{_CITY})?"
)
_EU_STREET_NEEDLES: Final = (
    "ring", "weg", "damm", "hof", "pad", "steeg", "dreef", "kade", "singel", "rambla",
    "camino", "ronda", "travesía", "avinguda", "praça", "largo", "travessa", "alameda",
    "vicolo", "straße", "strasse", "str.", "allee", "platz", "gasse", "laan", "straat", "gracht",
    "plein", "gatan", "gata", "gade", "veien", "calle", "avenida", "rua", "via", "viale",
    "piazza", "corso", "rue", "chemin", "carrer", "paseo", "plaza", "ulica", "ul.",
)  # fmt: skip
_PO_BOX: Final = re.compile(
    r"(?<![A-Za-z])(?i:p\.?[ \t]?o\.?[ \t]?box|post[ \t]+office[ \t]+box)[ \t]*#?[0-9]{1,6}"
    r"(?![0-9])"
)

# Anchored on the street word and house number ("路88号", "小区3栋"); the check extends the
# span back over the place names before it (a regex can't start there cheaply).
_ADDRESS_ZH: Final = re.compile(
    rf"(?:路|街|大道|大街|道|巷|弄|胡同|里)[{_CN_NUM}]{{1,5}}[号號]"
    rf"(?:[{_CN_NUM}A-Za-z\-]{{1,6}}(?:号楼|栋|幢|座|楼|单元|层|室|号|户))*"
    rf"|(?:小区|花园|公寓|大厦|苑|新村|家园|大楼|村|社区)"
    rf"(?:[{_CN_NUM}A-Za-z\-]{{1,6}}(?:号楼|栋|幢|座|楼|单元|层|室|号|户|组)){{1,4}}"
)
_ZH_ADDRESS_CUE: Final = re.compile(
    r"(?:家庭住址|通讯地址|收货地址|户籍地址|现住址|居住地址|住址|地址|家住|住在|现住|居住在|居住于)"
    rf"[：: \t]{{0,2}}(?:是|为|在)?(?P<v>[{_CJK}0-9A-Za-z\-#]{{4,40}})"
)
_ZH_ADDRESS_MARK: Final = re.compile(r"[省市区县镇乡村路街道巷弄号室栋楼]|[0-9]")
# Characters that belong to the sentence, not the address ("他住在北京市...").
_ZH_ADDRESS_LEAD: Final = frozenset("他她我你您住在于是家位址地的到往寄送搬迁现目前居为：: ")
_ZH_PLACE_CHARS_BEFORE: Final = 20


def _check_address_zh(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    start = m.start()
    floor = max(0, start - _ZH_PLACE_CHARS_BEFORE)
    while start > floor and "\u4e00" <= text[start - 1] <= "\u9fff":
        if text[start - 1] in _ZH_ADDRESS_LEAD:
            break
        start -= 1
    # A street needs a name: "路1号" alone is not an address.
    return (start, m.end()) if m.start() - start >= 2 else None


def _check_address_zh_cue(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    start, end = m.span("v")
    if len(_ZH_ADDRESS_MARK.findall(m["v"])) < 2:
        return None
    while start < end and text[start] in _ZH_ADDRESS_LEAD:
        start += 1
    return (start, end) if end - start >= 4 else None


# --- phones ----------------------------------------------------------------------------

_SEP: Final = r"(?:[ \t]*[.\-–—‑/][ \t]*|[ \t]{1,2})"
# North American numbers with any common separators (or none, after a phone cue).
_PHONE_NANP_LOOSE: Final = re.compile(
    r"(?<![0-9A-Za-z_+\-.])(?:\+?1(?:[ \t]*[.\-–—‑][ \t]*|[ \t]{1,2}))?"
    rf"(?:\([2-9][0-9]{{2}}\)[ \t]*|[2-9][0-9]{{2}})(?P<s1>{_SEP}?)[2-9][0-9]{{2}}(?P<s2>{_SEP}?)"
    r"[0-9]{4}(?![0-9A-Za-z_]|[.\-][0-9])"
)
_PHONE_CUE: Final = re.compile(
    r"(?:phone|tel|telephone|mobile|cell|cellphone|fax|whatsapp|call|text|sms|contact|reach"
    r"|ph|mob|number|电话|手机|联系|座机|传真|微信|号码)[^0-9\n]{0,12}\Z",
    re.IGNORECASE,
)


def _check_phone_nanp(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    if _after_id_word(text, m.start()):
        return None
    raw = m.group()
    # Ten digits in a row say nothing by themselves; after a phone cue they are a number.
    if not (m["s1"] or m["s2"] or "(" in raw or raw.startswith(("+", "1 ", "1-", "1."))) and (
        _PHONE_CUE.search(line_prefix(text, m.start(), 32)) is None
    ):
        return None
    return m.span()


# Chinese mobile numbers: 1[3-9]x xxxx xxxx, with spaces or dashes or none, optionally
# behind +86 / 0086 / (+86); Chinese text around them needs no spaces.
_PHONE_CN_MOBILE: Final = re.compile(
    r"1(?<![0-9A-Za-z_.]1)[3-9][0-9](?:[ \t\-]?[0-9]{4}){2}(?![0-9A-Za-z_]|[.\-][0-9])"
)
# The country code in front, taken with the number: "+86 ", "0086", "(+86)".
_CN_COUNTRY_CODE: Final = re.compile(r"(?:\(\+?86\)|(?<![0-9A-Za-z_+])(?:\+|00)86)[ \t\-]?\Z")


def _check_cn_mobile(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    start = m.start()
    code = _CN_COUNTRY_CODE.search(text, max(0, start - 6), start)
    if code is not None:
        start = code.start()
    return None if _after_id_word(text, start) else (start, m.end())


# National numbers behind a trunk 0 with mixed separators ("020-7946 0958", "0755-8888
# 6666", "(010)12345678"), with ASCII boundaries so Chinese text may touch them.
_PHONE_TRUNK_LOOSE: Final = re.compile(
    r"(?<![0-9A-Za-z_+\-./])(?:0[1-9][0-9]{0,3}(?:[ \t]*[\-–][ \t]*|[ \t]{1,2})"
    r"|\(0[1-9][0-9]{0,3}\)[ \t\-]?)[0-9]{2,8}(?:(?:[ \t]*[\-–][ \t]*|[ \t]{1,2})[0-9]{2,8}){0,3}"
    r"(?![0-9A-Za-z_/]|[.\-][0-9])"
)


def _check_trunk_loose(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    if _after_id_word(text, m.start()):
        return None
    raw = m.group()
    while _digits(raw) > 12:
        cut = max(raw.rfind(" "), raw.rfind("-"), raw.rfind("\t"), raw.rfind("–"))
        if cut <= 0:
            return None
        raw = raw[:cut].rstrip(" \t-–")
    return (m.start(), m.start() + len(raw)) if 9 <= _digits(raw) <= 12 else None


# Bare digit runs after a phone cue: "phone: 07700900123", "手机：13800138000".
_PHONE_CUED_EN: Final = re.compile(
    r"(?=[PpTtMmCcFfWw])(?<![A-Za-z])(?i:phone|tel|telephone|mobile|cell|cellphone|fax|whatsapp|ph|mob)"
    r"(?![A-Za-z])[ \t]*(?:no\.?|number|#)?[ \t]*[:#=\-]?[ \t]*(?:is[ \t]+)?"
    r"(?P<v>\+?[0-9]{9,14})(?![0-9A-Za-z])"
)
_PHONE_CUED_ZH: Final = re.compile(
    r"(?:电话|手机|手机号|手机号码|联系电话|联系方式|座机|电话号码|传真)[：: \t]{0,2}(?:是|为)?"
    r"(?P<v>\+?[0-9]{9,14})(?![0-9A-Za-z])"
)


def _check_phone_cued(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    return m.span("v")


# --- the detectors ---------------------------------------------------------------------

# (entity, pattern, check, needles, needles_casefold, needle_lead, digit_lead, non_ascii)
Spec = tuple[
    str, re.Pattern[str], Check | None, tuple[str, ...], bool, int | None, int | None, bool
]


def specs() -> list[Spec]:
    """The detectors of this module, in a fixed order; `detectors.builtin_detectors`
    turns them into `Detector`s with their entity's priority. Loads the gazetteers, so a
    policy pays for that when it applies, not its first request."""
    gz.given_names()
    gz.surnames()
    dob_needles = ("dob", "d.ob", "do.b", "d.o.b", "date", "birth", "born")
    out: list[Spec] = [
        ("PERSON", _PERSON_EN, _check_person_en, (), False, None, None, False),
        ("PERSON", _PERSON_ZH_CUE, _check_zh_cue, (), False, None, None, True),
        (
            "PERSON",
            _PERSON_ZH_TITLE,
            _check_zh_title,
            tuple(_CN_TITLES.split("|")),
            False,
            None,
            None,
            True,
        ),
        ("PERSON", _PERSON_ZH_UNCUED, _check_zh_uncued, (), False, None, None, True),
        ("PERSON", _PERSON_ZH_SHORT, _check_zh_short, (), False, None, None, True),
        ("ADDRESS", _ADDRESS_EN, _check_address_en, (), False, None, 0, False),
        ("ADDRESS", _ADDRESS_EU, None, _EU_STREET_NEEDLES, True, None, None, False),
        ("ADDRESS", _ADDRESS_FR, None, (), False, None, 0, False),
        ("ADDRESS", _PO_BOX, None, ("box",), True, None, None, False),
        ("ADDRESS", _ADDRESS_ZH, _check_address_zh, (), False, None, None, True),
        (
            "ADDRESS",
            _ZH_ADDRESS_CUE,
            _check_address_zh_cue,
            ("住址", "地址", "家住", "住在", "现住", "居住"),
            False,
            2,
            None,
            True,
        ),
        ("DATE_OF_BIRTH", _DOB_EN, _check_dob, dob_needles, True, 0, None, False),
        ("DATE_OF_BIRTH", _DOB_ZH, _check_dob, ("出生", "生日", "生于"), False, 0, None, True),
        (
            "HEALTH_PLAN_ID",
            _MBI,
            None,
            (),
            False,
            None,
            0,
            False,
        ),
        ("PHONE", _PHONE_NANP_LOOSE, _check_phone_nanp, (), False, None, 4, False),
        ("PHONE", _PHONE_CN_MOBILE, _check_cn_mobile, (), False, None, 6, False),
        ("PHONE", _PHONE_TRUNK_LOOSE, _check_trunk_loose, (), False, None, 1, False),
        (
            "PHONE",
            _PHONE_CUED_EN,
            _check_phone_cued,
            ("phone", "tel", "mobile", "cell", "fax", "whatsapp", "ph", "mob"),
            True,
            0,
            None,
            False,
        ),
        (
            "PHONE",
            _PHONE_CUED_ZH,
            _check_phone_cued,
            ("电话", "手机", "联系", "座机", "传真"),
            False,
            0,
            None,
            True,
        ),
    ]
    cued = [
        ("MEDICAL_RECORD_NUMBER", _MRN_EN, _MRN_ZH, _id_check(3),
         ("mrn", "mr#", "med", "chart", "patient", "hospital", "health", "record", "unit"),
         ("病历", "病案", "住院号", "门诊号", "就诊", "病人", "患者")),
        ("HEALTH_PLAN_ID", _HPID_EN, _HPID_ZH, _id_check(4),
         ("member", "subscriber", "policy", "insur", "health", "plan", "group", "medicare",
          "medicaid", "mbi", "beneficiary", "nhs"),
         ("医保", "社保", "医疗保险", "参保", "保单", "保险单")),
        ("PASSPORT", _PASSPORT_EN, _PASSPORT_ZH, _id_check(4, 6), ("passport",),
         ("护照", "通行证")),
        ("DRIVERS_LICENSE", _DL_EN, _DL_ZH, _id_check(4), ("driver", "driving", "licen", "dl"),
         ("驾驶", "驾照")),
    ]  # fmt: skip
    for entity, en_re, zh_re, check, en_needles, zh_needles in cued:
        assert en_re is not None and zh_re is not None
        needles = tuple(n.lower() for n in en_needles)
        out.append((entity, en_re, check, needles, True, 0, None, False))
        out.append((entity, zh_re, check, zh_needles, False, 0, None, True))
    out.append(("US_SSN", _SSN_CUED, _check_ssn_cued, _SSN_NEEDLES, True, 0, None, False))
    return out


_SSN_CUED: Final = re.compile(
    r"(?=[Ss])(?<![A-Za-z])(?i:ssn|ss#|ss[ \t]?no|social[ \t]+security(?:[ \t]+(?:number|no|#))?"
    r"|soc[ \t]?sec)(?![A-Za-z])[ \t]*(?:(?:number|no|#)\.?[ \t]*)?[:#=\-]?[ \t]*#?[ \t]*"
    r"(?:is[ \t]+)?(?P<area>[0-9]{3})(?P<sep>[ \-.]?)(?P<group>[0-9]{2})(?P=sep)"
    r"(?P<serial>[0-9]{4})(?![0-9])"
)
_SSN_NEEDLES: Final = ("ss", "social", "soc")


def _check_ssn_cued(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    if not us_ssn_valid(m["area"], m["group"], m["serial"]):
        return None
    return m.start("area"), m.end("serial")
