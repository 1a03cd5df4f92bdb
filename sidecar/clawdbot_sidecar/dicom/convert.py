"""One DICOM file in, what may leave out: a de-identified header, a PNG and a summary.

pydicom is the ``dicom`` extra: it is imported here when a file is converted, never at
the sidecar's start, so a sidecar without it still runs, and a DICOM part it can't convert
is refused with a reason (:class:`DicomRefused`), which keeps the request local or refuses
it: it never leaves unconverted.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any, Final

from clawdbot_api.v1alpha1.routingpolicy import Dicom
from clawdbot_sidecar.dicom.pixels import Region, Window, burned_in_risk, summary, to_png
from clawdbot_sidecar.dicom.profile import PrivateTag, Report, Settings, deidentify

__all__ = [
    "Converted",
    "DicomRefused",
    "available",
    "convert",
    "deidentify_bytes",
    "read",
    "settings_for",
]

DICM_OFFSET: Final = 128
# The CT window when neither the image nor the policy gives one (Hounsfield units).
SOFT_TISSUE: Final = Window(40, 400)


class DicomRefused(Exception):
    """The file can't be sent (the reason is short and holds no value from the file)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Converted:
    """What leaves for one DICOM file, and what the audit says of it."""

    png: bytes
    summary: str
    report: Report
    sha256: str
    """SHA-256 of the original file's bytes."""


def available() -> bool:
    """Whether pydicom (the ``dicom`` extra) is installed."""
    try:
        import pydicom  # noqa: F401, PLC0415 - the dicom extra, optional
    except ImportError:
        return False
    return True


def is_dicom(data: bytes) -> bool:
    """The DICM magic of a Part 10 file."""
    return data[DICM_OFFSET : DICM_OFFSET + 4] == b"DICM"


def settings_for(spec: Dicom, uid_key: bytes) -> Settings:
    """The profile's settings from the policy's spec.dicom."""
    return Settings(
        uid_key=uid_key,
        options=frozenset(o.value for o in spec.options),
        date_shift_days=spec.date_shift_days,
        keep_private=tuple(
            PrivateTag(int(t.group, 16), t.creator, int(t.element, 16))
            for t in spec.keep_private_tags
        ),
        pixels_cleaned=bool(spec.blank_regions),
    )


def read(data: bytes) -> Any:
    """The file parsed by pydicom (raises DicomRefused when it isn't a DICOM Part 10 file,
    with its preamble and DICM magic: a bare dataset is refused rather than guessed at)."""
    if not available():
        raise DicomRefused("dicom-unavailable")
    if not is_dicom(data):
        raise DicomRefused("dicom-unreadable")
    from pydicom import dcmread  # noqa: PLC0415 - the dicom extra
    from pydicom.errors import InvalidDicomError  # noqa: PLC0415

    try:
        return dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError, KeyError, TypeError, OSError) as exc:
        raise DicomRefused("dicom-unreadable") from exc


def _check_pixels(ds: Any, regions: bool) -> None:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomRefused("dicom-no-image")
    risk = burned_in_risk(ds)
    if risk is not None and not regions:
        raise DicomRefused(f"dicom-{risk}")


def convert(data: bytes, spec: Dicom, uid_key: bytes) -> Converted:
    """De-identify ``data`` and render it for a vision model; raises DicomRefused."""
    if len(data) > spec.max_bytes:
        raise DicomRefused("dicom-too-large")
    ds = read(data)
    _check_pixels(ds, bool(spec.blank_regions))
    regions = [Region(r.left, r.top, r.width, r.height) for r in spec.blank_regions]
    ct = spec.ct_window
    windows = {"CT": Window(ct.center, ct.width) if ct is not None else SOFT_TISSUE}
    if spec.mr_window is not None:
        windows["MR"] = Window(spec.mr_window.center, spec.mr_window.width)
    try:
        png = to_png(ds, frame=spec.frame, default_windows=windows, regions=regions)
    except Exception as exc:  # a codec pydicom lacks, a broken pixel module: fail closed
        raise DicomRefused("dicom-pixels-undecodable") from exc
    report = deidentify(ds, settings_for(spec, uid_key))
    return Converted(png, summary(ds), report, hashlib.sha256(data).hexdigest())


def deidentify_bytes(data: bytes, settings: Settings) -> tuple[bytes, Report]:
    """De-identify a whole file (the CLI's path): the new file's bytes and the report."""
    ds = read(data)
    report = deidentify(ds, settings)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue(), report
