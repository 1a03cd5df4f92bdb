"""The Basic Profile on real files (pydicom's own) and on files planting every attribute."""

from __future__ import annotations

import datetime as dt
import io
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.charset import encode_string
from pydicom.data import get_charset_files, get_testdata_file

from clawdbot_api.v1alpha1.routingpolicy import Dicom
from clawdbot_sidecar.dicom.convert import DicomRefused, convert, deidentify_bytes
from clawdbot_sidecar.dicom.pixels import burned_in_risk
from clawdbot_sidecar.dicom.profile import PrivateTag, Settings, resolve
from clawdbot_sidecar.dicom.table import TABLE
from clawdbot_testing.dicom import KEPT_CREATOR, planted_file, search_encodings

KEY = b"policy secret"
MODIFIED = "retainLongitudinalTemporalInformationModifiedDates"


def _left(planted: dict[str, str], data: bytes) -> list[str]:
    return [k for k, v in planted.items() if any(e in data for e in search_encodings(v))]


def test_every_planted_value_leaves_the_file() -> None:
    planted = planted_file(study_uid="1.2.826.0.1.3680043.10.999.1")
    assert not _left(planted.values, b"") and _left(planted.values, planted.data)  # planted
    out, report = deidentify_bytes(planted.data, Settings(uid_key=KEY))
    assert _left(planted.values, out) == []
    ds = pydicom.dcmread(io.BytesIO(out))  # valid DICOM again
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert report.private_removed == 5  # two creators, three attributes
    assert set(report.counts) <= set("XZDUKC") and report.counts["X"] > 200


def test_uids_are_consistent_within_a_study_and_new() -> None:
    study = "1.2.826.0.1.3680043.10.999.2"
    a, b = (planted_file(study_uid=study, instance=i) for i in (1, 2))
    out_a, out_b = (
        pydicom.dcmread(io.BytesIO(deidentify_bytes(p.data, Settings(KEY))[0])) for p in (a, b)
    )
    assert out_a.StudyInstanceUID == out_b.StudyInstanceUID != study
    assert out_a.SeriesInstanceUID == out_b.SeriesInstanceUID
    assert out_a.SOPInstanceUID != out_b.SOPInstanceUID
    assert out_a.StudyInstanceUID.startswith("2.25.") and len(out_a.StudyInstanceUID) <= 64
    other_key = pydicom.dcmread(io.BytesIO(deidentify_bytes(a.data, Settings(b"other"))[0]))
    assert other_key.StudyInstanceUID != out_a.StudyInstanceUID
    # References inside sequences follow the instances they name.
    ref = out_a.ReferencedImageSequence[0]
    assert ref.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ref.ReferencedSOPInstanceUID.startswith("2.25.")


def test_dates_are_shifted_by_the_offset_with_modified_dates() -> None:
    planted = planted_file(study_uid="1.2.826.0.1.3680043.10.999.3")
    settings = Settings(KEY, options=frozenset({MODIFIED}), date_shift_days=-1000)
    ds = pydicom.dcmread(io.BytesIO(deidentify_bytes(planted.data, settings)[0]))
    shifted = 0
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        original = dt.datetime.strptime(planted.dates[keyword], "%Y%m%d").date()
        assert getattr(ds, keyword) == (original - dt.timedelta(days=1000)).strftime("%Y%m%d")
        shifted += 1
    assert shifted == 4 and ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert ds.PatientBirthDate == ""  # not a longitudinal date: still emptied
    with pytest.raises(ValueError, match="exclude"):
        Settings(
            KEY, options=frozenset({MODIFIED, "retainLongitudinalTemporalInformationFullDates"})
        )


def test_options_keep_what_they_name_and_clean_descriptors() -> None:
    planted = planted_file(study_uid="1.2.826.0.1.3680043.10.999.4")
    ds0 = pydicom.dcmread(io.BytesIO(planted.data))
    ds0.StudyDescription = f"CT chest for {planted.values['PatientName']}"
    buf = io.BytesIO()
    ds0.save_as(buf)
    settings = Settings(
        KEY,
        options=frozenset(
            {"cleanDescriptors", "retainDeviceIdentity", "retainPatientCharacteristics"}
        ),
        keep_private=(PrivateTag(0x0011, KEPT_CREATOR, 0x02),),
    )
    out, report = deidentify_bytes(buf.getvalue(), settings)
    ds = pydicom.dcmread(io.BytesIO(out))
    assert ds.StudyDescription == "CT chest for *"
    assert ds.StationName == planted.values["StationName"]  # device identity retained
    assert ds.PatientAge == "047Y"  # patient characteristics retained
    assert planted.kept_private.encode() in out and b"Q904PLX" not in out
    assert report.private_kept == 2  # the kept attribute and its creator


@pytest.mark.parametrize(
    ("basic", "expected"),
    [("X/Z", "Z"), ("X/D", "D"), ("Z/D", "D"), ("X/Z/D", "D"), ("X/Z/U*", "U"), ("X", "X")],
)
def test_combined_codes_resolve_to_a_valid_choice(basic: str, expected: str) -> None:
    assert resolve(basic, "", frozenset())[0] == expected


def test_the_table_names_each_attribute_once() -> None:
    assert len({t for t, *_ in TABLE}) == len(TABLE) == 617


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "test-SR.dcm"])
def test_pydicom_files_lose_their_identifiers(name: str) -> None:
    path = get_testdata_file(name)
    original = pydicom.dcmread(path)
    values = [str(original.get(k)) for k in ("PatientName", "PatientID", "OperatorsName",
              "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "ReferringPhysicianName",
              "StudyID", "AccessionNumber") if original.get(k)]  # fmt: skip
    values = [v for v in values if len(v) > 2]
    assert values
    with open(path, "rb") as f:
        out, _ = deidentify_bytes(f.read(), Settings(KEY))
    assert [v for v in values if any(e in out for e in search_encodings(v))] == []
    pydicom.dcmread(io.BytesIO(out))


@pytest.mark.parametrize("path", get_charset_files("chr*.dcm"))
def test_charset_files_lose_patient_names_in_their_encoding(path: str) -> None:
    original = pydicom.dcmread(path)
    names = [str(p) for p in (original.get("PatientName"),) if p]
    charsets = original._character_set
    with open(path, "rb") as f:
        out, _ = deidentify_bytes(f.read(), Settings(KEY))
    for name in names:
        parts = [name, *[p for p in name.replace("=", "^").split("^") if len(p) > 1]]
        for part in parts:
            encoded = [encode_string(part, charsets), *search_encodings(part)]
            assert not any(e in out for e in encoded if e), (path, part)
    pydicom.dcmread(io.BytesIO(out))


def test_conversion_refuses_burned_in_text_unless_regions_are_blanked() -> None:
    planted = planted_file(study_uid="1.2.826.0.1.3680043.10.999.5")
    ds = pydicom.dcmread(io.BytesIO(planted.data))
    ds.Modality = "US"
    del ds.BurnedInAnnotation
    assert burned_in_risk(ds) == "burned-in-unknown:US"
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(DicomRefused, match="burned-in"):
        convert(buf.getvalue(), Dicom(), KEY)
    blanked = convert(
        buf.getvalue(), Dicom(blankRegions=[{"left": 0, "top": 0, "width": 8, "height": 2}]), KEY
    )
    assert blanked.png.startswith(b"\x89PNG")
    assert "cleanPixelData" not in blanked.summary  # names only in the code sequence
    with pytest.raises(DicomRefused, match=r"unreadable|no-image"):
        convert(b"not dicom at all" * 20, Dicom(), KEY)


def test_the_docs_list_the_table_as_the_module_has_it() -> None:
    from clawdbot_sidecar.dicom.table import EXTRA, OPTIONS  # noqa: PLC0415

    expected = []
    rows_in = [*TABLE, *((t, k, "X", "") for t, k in EXTRA)]
    for tag, keyword, basic, opts in sorted(rows_in):
        code = resolve(basic, "", frozenset())[0]
        pairs = [p.split(":") for p in opts.split()]
        changes = ", ".join(f"{OPTIONS[letter]} ({action})" for letter, action in pairs)
        where = " (beyond the table)" if (tag, keyword) in EXTRA else ""
        expected.append(
            f"| ({tag >> 16:04X},{tag & 0xFFFF:04X}) | {keyword}{where} | {basic} | {code} "
            f"| {changes} |"
        )
    docs = Path(__file__).resolve().parents[3] / "docs" / "dicom.md"
    rows = [line for line in docs.read_text().splitlines() if line.startswith("| (")]
    assert rows == expected


def _png_pixels(png: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, colour type, raw rows) of a PNG this project wrote."""
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    idat = png[png.index(b"IDAT") + 4 : png.index(b"IEND") - 8]
    return width, height, png[25], zlib.decompress(idat)


@pytest.mark.parametrize(
    ("name", "color_type", "first_pixel"),
    [
        ("CT_small.dcm", 0, None),
        ("MR_small.dcm", 0, None),
        ("SC_rgb_rle_2frame.dcm", 2, None),
        ("SC_ybr_full_422_uncompressed.dcm", 2, b"\xfe\x00\x00"),  # red, not converted twice
        ("examples_palette.dcm", 2, None),
    ],
)
def test_frames_become_pngs(name: str, color_type: int, first_pixel: bytes | None) -> None:
    from clawdbot_sidecar.dicom.pixels import to_png  # noqa: PLC0415

    ds = pydicom.dcmread(get_testdata_file(name))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    png = to_png(ds, frame=frames - 1)
    width, height, kind, raw = _png_pixels(png)
    assert (width, height, kind) == (ds.Columns, ds.Rows, color_type)
    assert len(raw) == height * (1 + width * (3 if kind == 2 else 1))
    if first_pixel is not None:
        assert raw[1:4] == first_pixel
    if name == "CT_small.dcm":
        assert len(set(raw[1 : width + 1])) > 1  # windowed, not one flat grey


def test_monochrome1_is_inverted() -> None:
    from clawdbot_sidecar.dicom.pixels import to_png  # noqa: PLC0415

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    plain = _png_pixels(to_png(ds))[3]
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = _png_pixels(to_png(ds))[3]
    assert inverted[1] == 255 - plain[1] and inverted[0] == plain[0] == 0
