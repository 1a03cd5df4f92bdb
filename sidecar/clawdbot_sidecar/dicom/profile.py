"""The Basic Application Level Confidentiality Profile (DICOM PS3.15 Annex E) on a dataset.

:func:`deidentify` applies :data:`~.table.TABLE` to a pydicom dataset in place, at every
depth (the attributes of sequence items too), with the options the settings select, and
returns a :class:`Report` of what was done: counts per action code and, for ``clawdbot
dicom inspect``, each attribute's tag, keyword and action, never a value.

The combined codes of the table leave the choice to the implementation, which does not
know the IOD's attribute types; the choice here always keeps the file valid whatever the
attribute's type, and never keeps the value:

* X/Z -> Z (an empty value is valid for a Type 2 attribute, and harmless for Type 3);
* X/D, Z/D, X/Z/D -> D (a dummy value is valid even for a Type 1 attribute);
* X/Z/U* -> the sequence is kept and its UIDs replaced (U), its items de-identified.

D on a sequence keeps its items, de-identified, with every text value replaced by a dummy.
C (clean) shifts dates by the policy's offset (Retain Longitudinal Temporal Information
with Modified Dates) and, for text, removes from the value every identifying value the
dataset itself holds (the patient's name and its parts, IDs, the values the profile
removes): this is the limit of what can be cleaned without knowing the text's meaning, and
the sidecar's text redaction runs on the summary it sends as well.

Private attributes are removed unless the settings keep them by creator and element.
UIDs are replaced by ``2.25.<n>`` where n is 128 bits of HMAC-SHA256 of the original UID
under the settings' key: the same UID maps to the same new UID in every file of a study
(so a series stays a series and references still resolve), and differs from the original.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Iterable, MutableSequence
from dataclasses import dataclass, field
from typing import Any, Final

from clawdbot_sidecar.dicom.table import EXTRA, OPTIONS, TABLE

__all__ = [
    "ALL_OPTIONS",
    "Action",
    "PrivateTag",
    "Report",
    "Settings",
    "deidentify",
    "resolve",
]

ALL_OPTIONS: Final = tuple(OPTIONS.values())
_ROWS: Final = {tag: (keyword, basic, opts) for tag, keyword, basic, opts in TABLE} | {
    tag: (keyword, "X", "") for tag, keyword in EXTRA
}
_TEXT_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH",
                              "ST", "TM", "UC", "UR", "UT"})  # fmt: skip
_FREE_TEXT_VRS: Final = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# Dummy values by VR (D): valid for the VR, identifying nothing.
_DUMMIES: Final[dict[str, Any]] = {
    "AE": "ANONYMOUS", "AS": "000D", "CS": "ANONYMIZED", "DA": "19000101",
    "DS": "0", "DT": "19000101000000", "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED",
    "PN": "ANONYMIZED", "SH": "ANONYMIZED", "ST": "ANONYMIZED", "TM": "000000",
    "UC": "ANONYMIZED", "UR": "", "UT": "ANONYMIZED", "FL": 0.0, "FD": 0.0, "SL": 0,
    "SS": 0, "UL": 0, "US": 0, "SV": 0, "UV": 0, "AT": 0,
}  # fmt: skip
_DCM_CODES: Final[dict[str, tuple[str, str]]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "cleanPixelData": ("113101", "Clean Pixel Data Option"),
    "cleanGraphics": ("113103", "Clean Graphics Option"),
    "cleanStructuredContent": ("113104", "Clean Structured Content Option"),
    "cleanDescriptors": ("113105", "Clean Descriptors Option"),
    "retainLongitudinalTemporalInformationFullDates": (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    "retainLongitudinalTemporalInformationModifiedDates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "retainPatientCharacteristics": ("113108", "Retain Patient Characteristics Option"),
    "retainDeviceIdentity": ("113109", "Retain Device Identity Option"),
    "retainUIDs": ("113110", "Retain UIDs Option"),
    "retainSafePrivate": ("113111", "Retain Safe Private Option"),
    "retainInstitutionIdentity": ("113112", "Retain Institution Identity Option"),
}
_MIN_CLEAN_LEN: Final = 3


@dataclass(frozen=True, slots=True)
class PrivateTag:
    """A private attribute the policy keeps: its group, its creator and the element's low
    byte (the block's offset), e.g. group 0x0019, creator "SIEMENS MR HEADER", element 0x08."""

    group: int
    creator: str
    element: int


@dataclass(frozen=True, slots=True)
class Settings:
    """What the profile does: the options on, the date offset, the UID key, the private
    attributes kept and the pixel regions blanked (Clean Pixel Data, by the caller)."""

    uid_key: bytes
    options: frozenset[str] = frozenset()
    date_shift_days: int = 0
    keep_private: tuple[PrivateTag, ...] = ()
    pixels_cleaned: bool = False

    def __post_init__(self) -> None:
        unknown = self.options - set(ALL_OPTIONS)
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r}")
        full = "retainLongitudinalTemporalInformationFullDates"
        modified = "retainLongitudinalTemporalInformationModifiedDates"
        if full in self.options and modified in self.options:
            raise ValueError(f"{full} and {modified} exclude each other")


@dataclass(frozen=True, slots=True)
class Action:
    """What the profile did to one attribute (a path of keywords for nested ones)."""

    path: str
    tag: int
    vr: str
    code: str
    """The action taken: X, Z, D, U, K, C (combined codes resolved)."""
    rule: str
    """Why: the table's code and the option that changed it, or "private"/"curve"/"overlay"."""


@dataclass(slots=True)
class Report:
    """What one de-identification did: counts and attributes, never values."""

    counts: Counter[str] = field(default_factory=Counter)
    actions: list[Action] = field(default_factory=list)
    private_removed: int = 0
    private_kept: int = 0


def resolve(basic: str, opts: str, options: frozenset[str]) -> tuple[str, str]:
    """The action for a table row under the options on, and the rule that chose it: an
    option's action replaces the basic one, and a retaining option (K) wins over a
    cleaning one (C) when both are on."""
    chosen: tuple[str, str] | None = None
    for pair in opts.split():
        letter, code = pair.split(":")
        name = OPTIONS[letter]
        if name in options and (chosen is None or code == "K"):
            chosen = (code, f"{basic}+{name}")
    if chosen is not None:
        return chosen
    if basic == "X/Z":
        return "Z", basic
    if basic in ("X/D", "Z/D", "X/Z/D"):
        return "D", basic
    if basic == "X/Z/U*":
        return "U", basic
    return basic, basic


class _Deidentifier:
    def __init__(self, settings: Settings, report: Report, clean_values: list[str]) -> None:
        self.settings = settings
        self.report = report
        self.shift = dt.timedelta(days=settings.date_shift_days)
        pattern = "|".join(
            re.escape(v) for v in sorted(set(clean_values), key=len, reverse=True) if v
        )
        self.cleaner = re.compile(pattern, re.IGNORECASE) if pattern else None
        self.kept_creators: set[tuple[int, str]] = {
            (p.group, p.creator.strip().upper()) for p in settings.keep_private
        }

    # -- the walk -----------------------------------------------------------------------

    def dataset(self, ds: Any, path: str, dummy_text: bool = False) -> None:
        creators = _private_creators(ds)
        for elem in list(ds):
            tag = int(elem.tag)
            where = f"{path}{elem.keyword or _tag_text(tag)}"
            if elem.tag.is_private:
                self._private(ds, elem, where, creators)
                continue
            group, element = tag >> 16, tag & 0xFFFF
            if group & 0xFF00 == 0x5000:
                self._do(ds, elem, where, "X", "curve")
                continue
            if group & 0xFF00 == 0x6000 and element in (0x3000, 0x4000):
                # Overlay bits can't be cleaned (Clean Graphics), only removed.
                self._do(ds, elem, where, "X", "overlay")
                continue
            row = _ROWS.get(tag)
            if row is None:
                self._unlisted(elem, where, dummy_text)
                continue
            _, basic, opts = row
            code, rule = resolve(basic, opts, self.settings.options)
            self._do(ds, elem, where, code, rule)

    def _unlisted(self, elem: Any, where: str, dummy_text: bool) -> None:
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                self.dataset(item, f"{where}[{i}].", dummy_text)
        elif dummy_text and elem.VR in _FREE_TEXT_VRS and elem.value not in (None, ""):
            elem.value = _DUMMIES[elem.VR]
            self._count(elem, where, "D", "in a D sequence")

    def _private(self, ds: Any, elem: Any, where: str, creators: dict[int, str]) -> None:
        tag = int(elem.tag)
        group, element = tag >> 16, tag & 0xFFFF
        if self._keeps_private(group, element, creators):
            self.report.private_kept += 1
            self._count(elem, where, "K", "private kept by the policy")
            return
        del ds[elem.tag]
        self.report.private_removed += 1
        self._count(elem, where, "X", "private")

    def _keeps_private(self, group: int, element: int, creators: dict[int, str]) -> bool:
        if not self.settings.keep_private:
            return False
        if 0x0010 <= element <= 0x00FF:  # a private creator: kept with a kept attribute
            creator = creators.get(element, "").strip().upper()
            return (group, creator) in self.kept_creators
        creator = creators.get(element >> 8, "").strip().upper()
        return any(
            p.group == group
            and p.creator.strip().upper() == creator
            and p.element == element & 0xFF
            for p in self.settings.keep_private
        )

    # -- the actions --------------------------------------------------------------------

    def _do(self, ds: Any, elem: Any, where: str, code: str, rule: str) -> None:
        vr = elem.VR
        if code == "X":
            del ds[elem.tag]
        elif code == "Z":
            elem.value = [] if vr == "SQ" else (b"" if vr in _BINARY_VRS else None)
        elif code == "D":
            self._dummy(elem, where)
        elif code == "U":
            self._uid(elem, where)
        elif code == "C":
            self._clean(elem, where)
        elif code == "K" and vr == "SQ":
            for i, item in enumerate(elem.value):
                self.dataset(item, f"{where}[{i}].")
        self._count(elem, where, code, rule)

    def _dummy(self, elem: Any, where: str) -> None:
        vr = elem.VR
        if vr == "SQ":
            for i, item in enumerate(elem.value):
                self.dataset(item, f"{where}[{i}].", dummy_text=True)
        elif vr == "UI":
            self._uid(elem, where)
        elif vr in _BINARY_VRS:
            elem.value = b""
        else:
            elem.value = _DUMMIES.get(vr, "")

    def _uid(self, elem: Any, where: str) -> None:
        if elem.VR == "SQ":  # X/Z/U*: the sequence's UIDs (rows of their own) are replaced
            for i, item in enumerate(elem.value):
                self.dataset(item, f"{where}[{i}].")
            return
        if elem.VR != "UI":
            elem.value = _DUMMIES.get(elem.VR, "")
            return
        if elem.VM > 1:
            elem.value = [self.new_uid(str(v)) for v in elem.value]
        elif elem.value:
            elem.value = self.new_uid(str(elem.value))

    def new_uid(self, uid: str) -> str:
        digest = hmac.new(self.settings.uid_key, uid.strip("\0 ").encode(), hashlib.sha256)
        return "2.25." + str(int.from_bytes(digest.digest()[:16], "big"))

    def _clean(self, elem: Any, where: str) -> None:
        vr = elem.VR
        if vr == "SQ":  # structured content: items kept, their text cleaned
            for i, item in enumerate(elem.value):
                self._clean_items(item, f"{where}[{i}].")
        elif vr in ("DA", "DT"):
            elem.value = self._shift(elem)
        elif vr == "TM":
            return  # modified dates keep times
        elif vr in _FREE_TEXT_VRS:
            elem.value = self._clean_text(elem.value)
        else:
            self._dummy(elem, where)

    def _clean_items(self, item: Any, path: str) -> None:
        self.dataset(item, path)
        for elem in item:
            if elem.VR in _FREE_TEXT_VRS and elem.value not in (None, ""):
                elem.value = self._clean_text(elem.value)

    def _clean_text(self, value: Any) -> Any:
        if self.cleaner is None:
            return value
        if isinstance(value, MutableSequence | tuple):
            return [self.cleaner.sub("*", str(v)) for v in value]  # multi-valued
        return self.cleaner.sub("*", str(value))

    def _shift(self, elem: Any) -> Any:
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        out = [_shift_one(str(v), elem.VR, self.shift) for v in values if v is not None]
        return out if elem.VM > 1 else (out[0] if out else None)

    def _count(self, elem: Any, where: str, code: str, rule: str) -> None:
        self.report.counts[code] += 1
        self.report.actions.append(Action(where, int(elem.tag), elem.VR, code, rule))


def _shift_one(value: str, vr: str, shift: dt.timedelta) -> str:
    """A DA or DT value moved by ``shift`` days (a range's ends each); a dummy if unparsable."""
    if "-" in value and vr == "DA":
        return "-".join(_shift_one(v, vr, shift) if v else "" for v in value.split("-"))
    text = value.strip()
    try:
        day = dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return str(_DUMMIES[vr])  # not a full date: nothing can keep its meaning, so nothing stays
    return (day + shift).strftime("%Y%m%d") + (text[8:] if vr == "DT" else "")


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _private_creators(ds: Any) -> dict[int, str]:
    """Private creator values by block: the creator's element (0x10-0xFF), which is the
    high byte of the elements of its block."""
    out: dict[int, str] = {}
    for elem in ds:
        tag = int(elem.tag)
        if elem.tag.is_private and 0x0010 <= tag & 0xFFFF <= 0x00FF:
            out[tag & 0xFFFF] = str(elem.value)
    return out


def identifying_values(ds: Any, options: frozenset[str]) -> list[str]:
    """The values the profile does not keep (X, Z, D, U), split into their parts: what a
    descriptor is cleaned of."""
    found: list[str] = []

    def walk(d: Any) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
                continue
            row = _ROWS.get(int(elem.tag))
            if row is None or elem.VR not in _TEXT_VRS or elem.value in (None, ""):
                continue
            code, _ = resolve(row[1], row[2], options)
            if code in ("K", "C"):
                continue
            found.extend(_parts(elem.value))

    walk(ds)
    return [v for v in found if len(v) >= _MIN_CLEAN_LEN]


def _parts(value: Any) -> Iterable[str]:
    for v in value if isinstance(value, MutableSequence | tuple) else [value]:
        text = str(v).strip()
        yield text
        yield from (p.strip() for p in re.split(r"[\^=\s,]+", text) if p.strip())


def deidentify(ds: Any, settings: Settings) -> Report:
    """Apply the profile to ``ds`` (a pydicom Dataset or FileDataset) in place."""
    report = Report()
    worker = _Deidentifier(settings, report, identifying_values(ds, settings.options))
    meta = getattr(ds, "file_meta", None)
    worker.dataset(ds, "")
    if meta is not None:
        worker.dataset(meta, "FileMeta.")
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    _mark(ds, settings)
    return report


def _mark(ds: Any, settings: Settings) -> None:
    """PatientIdentityRemoved, DeidentificationMethod(CodeSequence), and how dates fared."""
    from pydicom.dataset import Dataset  # noqa: PLC0415 - the extra: the caller parsed a file

    ds.PatientIdentityRemoved = "YES"
    names = ["basic", *sorted(settings.options)]
    if settings.pixels_cleaned:
        names.append("cleanPixelData")
    ds.DeidentificationMethod = [_DCM_CODES[n][1][:64] for n in names]
    items = []
    for n in names:
        item = Dataset()
        item.CodeValue, item.CodeMeaning = _DCM_CODES[n]
        item.CodingSchemeDesignator = "DCM"
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items
    if "retainLongitudinalTemporalInformationFullDates" in settings.options:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    elif "retainLongitudinalTemporalInformationModifiedDates" in settings.options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"
    if settings.pixels_cleaned:
        ds.BurnedInAnnotation = "NO"
