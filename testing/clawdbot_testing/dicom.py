"""DICOM files that plant a distinct value in every attribute of PS3.15 Annex E's table
(and of the attributes the de-identifier removes beyond it).

:func:`planted_file` writes a small CT image whose every table attribute, repeating-group
attribute (overlay, curve) and two private blocks hold a value found nowhere else; a
sequence's item holds a planted person name and instance UID. :class:`Planted` lists the
values and the encodings to search for them: after de-identification none may be found.
Numbers in binary VRs (US) are planted but not searched (two bytes appear anywhere).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from clawdbot_sidecar.dicom.table import EXTRA, TABLE

__all__ = ["Planted", "planted_file", "search_encodings"]

CT_CLASS = CTImageStorage
PRIVATE_CREATOR = "PLANTED CREATOR"
KEPT_CREATOR = "KEPT CREATOR"
BASE_DATE = dt.date(1951, 3, 7)


@dataclass
class Planted:
    """A planted file's bytes and the values in it, by attribute keyword."""

    data: bytes
    values: dict[str, str] = field(default_factory=dict)
    dates: dict[str, str] = field(default_factory=dict)
    """DA attributes' planted dates (for the shift check)."""
    uids: dict[str, str] = field(default_factory=dict)
    kept_private: str = ""
    """The value of the private attribute a policy may keep ((0011,xx02) of KEPT_CREATOR)."""


def search_encodings(value: str, charset: str | None = None) -> Iterable[bytes]:
    """Every byte form a value may take in a file or a request: ASCII/UTF-8, Latin-1,
    UTF-16 both ways, and the dataset's own character set when given."""
    yield value.encode("utf-8")
    for codec in ("latin-1", "utf-16-le", "utf-16-be", charset):
        if codec is None:
            continue
        with contextlib.suppress(UnicodeEncodeError, LookupError):
            yield value.encode(codec)


def _day(n: int) -> str:
    return (BASE_DATE + dt.timedelta(days=41 * n)).strftime("%Y%m%d")


# VR -> (n, token) -> (the value written, the value searched for).
_PLANTS: dict[str, Callable[[int, str], tuple[Any, str]]] = {
    "PN": lambda n, t: (f"{t}^{t}G", t),
    "CS": lambda n, t: (t.upper(), t.upper()),
    "DA": lambda n, t: (_day(n), _day(n)),
    "DT": lambda n, t: (_day(n) + "101112", _day(n) + "101112"),
    "TM": lambda n, t: ((v := f"10{n % 60:02d}{(n * 7) % 60:02d}.{n:03d}"), v),
    "UI": lambda n, t: ((v := f"1.2.826.0.1.3680043.10.777.{n}"), v),
    "AS": lambda n, t: ("047Y", "047Y"),
    "DS": lambda n, t: ((v := f"{n}.{n}37"), v),
    "IS": lambda n, t: ((v := f"9{n:04d}7"), v),
    "UR": lambda n, t: (f"https://pacs.example.org/{t}", t),
    **{vr: (lambda n, t: (t, t)) for vr in ("LO", "SH", "LT", "ST", "UT", "UC", "AE")},
    **{vr: (lambda n, t: (t.encode(), t)) for vr in ("OB", "OW", "UN")},
}


def _value(vr: str, n: int, planted: Planted, keyword: str) -> Any:
    plant = _PLANTS.get(vr)
    if plant is None:
        return 4  # US and other binary numbers: planted, not searched
    value, searched = plant(n, f"Q{n:03d}PLX")
    planted.values[keyword] = searched
    if vr == "DA":
        planted.dates[keyword] = searched
    if vr == "UI":
        planted.uids[keyword] = searched
    return value


def _item(n: int, planted: Planted, keyword: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = CT_CLASS
    uid = f"1.2.826.0.1.3680043.10.888.{n}"
    item.ReferencedSOPInstanceUID = uid
    token = f"R{n:03d}PLX"
    item.PatientName = f"{token}^{token}"
    planted.values[f"{keyword}.ReferencedSOPInstanceUID"] = uid
    planted.values[f"{keyword}.PatientName"] = token
    return item


def planted_file(*, study_uid: str | None = None, instance: int = 1) -> Planted:
    """A CT slice (8x8, 16-bit) with a value planted in every attribute of the table."""
    planted = Planted(data=b"")
    ds = Dataset()
    rows = [(tag, keyword) for tag, keyword, _, _ in TABLE] + list(EXTRA)
    for n, (tag, keyword) in enumerate(rows):
        if tag >> 16 in (0x0000, 0x0002):
            continue  # the command set is never in a file; the file meta is written below
        vr = dictionary_VR(tag).split(" or ")[0]
        if vr == "SQ":
            ds.add_new(tag, "SQ", Sequence([_item(n, planted, keyword)]))
        else:
            ds.add_new(tag, vr, _value(vr, n, planted, keyword))
    # Repeating groups, then private blocks.
    ds.add_new(0x60003000, "OW", b"OVLQ901PLX\0\0")
    ds.add_new(0x60004000, "LT", "Q902PLX")
    ds.add_new(0x50003000, "OB", b"CRVQ903PLX")
    planted.values.update(OverlayData="OVLQ901PLX", OverlayComments="Q902PLX")
    planted.values["CurveData"] = "CRVQ903PLX"
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", "Q904PLX")
    block.add_new(0x02, "LO", "Q905PLX")
    kept = ds.private_block(0x0011, KEPT_CREATOR, create=True)
    kept.add_new(0x02, "LO", "Q906PLX")
    planted.values.update({"Private0009": "Q904PLX", "Private0009b": "Q905PLX"})
    planted.kept_private = "Q906PLX"
    planted.values["Private0011"] = "Q906PLX"
    planted.values["PrivateCreator"] = PRIVATE_CREATOR
    # The study under test, and an image.
    if study_uid is not None:
        ds.StudyInstanceUID = planted.values["StudyInstanceUID"] = study_uid
        planted.uids["StudyInstanceUID"] = study_uid
    ds.SOPClassUID = CT_CLASS
    ds.SOPInstanceUID = f"{ds.StudyInstanceUID}.{instance}"
    planted.values["SOPInstanceUID"] = planted.uids["SOPInstanceUID"] = ds.SOPInstanceUID
    ds.Modality, ds.BurnedInAnnotation = "CT", "NO"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = bytes(range(128))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "Q907PLX"
    planted.values["SourceApplicationEntityTitle"] = "Q907PLX"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    planted.data = out.getvalue()
    return planted
