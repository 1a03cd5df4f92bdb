"""Pixels to PNG for vision models, the burned-in text check, and the header's summary.

:func:`to_png` takes one frame (the first, or a chosen one of a multi-frame image),
applies the modality LUT (Rescale Slope and Intercept), windows CT and MR by the file's
Window Center and Width (or the caller's defaults), scales anything else over its range,
inverts MONOCHROME1, renders colour (RGB, YBR, palette) as RGB, blanks the regions
given, and writes an 8-bit PNG with zlib (no imaging library). :func:`burned_in_risk`
says why an image may carry burned-in text. :func:`summary` is the de-identified header
as text lines. numpy, like pydicom, comes with the ``dicom`` extra and is imported only
when an image is rendered.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["BURNED_IN_MODALITIES", "Region", "Window", "burned_in_risk", "summary", "to_png"]

# Modalities whose pixels commonly carry burned-in text (patient name, dates, measurements)
# when the file does not say otherwise: ultrasound, secondary capture, angiography and
# fluoroscopy, endoscopy and other photographic captures, ophthalmic photography, "other".
BURNED_IN_MODALITIES: Final = frozenset(
    {"US", "IVUS", "SC", "XA", "RF", "ES", "XC", "GM", "OP", "SM", "OT", "DOC", "ECG"}
)
# Header attributes the summary never shows: bulk data, UIDs, the profile's own marks.
_SUMMARY_SKIP_VRS: Final = frozenset({"SQ", "UI", "OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_SUMMARY_MAX_VALUE: Final = 160
_PLACEHOLDERS: Final = frozenset(
    {"ANONYMIZED", "ANONYMOUS", "19000101", "000000", "19000101000000"}
)
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True, slots=True)
class Region:
    """A rectangle of pixels to blank, in the image's columns and rows."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Window:
    """A display window: center and width in the modality's units (HU for CT)."""

    center: float
    width: float


def burned_in_risk(ds: Any) -> str | None:
    """Why the pixels may carry text (``burned-in-yes``, ``burned-in-unknown:<MOD>``), or None."""
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "burned-in-yes"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if not flag and modality in BURNED_IN_MODALITIES:
        return f"burned-in-unknown:{modality or 'none'}"
    return None


def frame_array(ds: Any, frame: int = 0) -> Any:
    """One frame's pixels as decoded by pydicom (raises when it can't decode them)."""
    from pydicom.pixels.utils import pixel_array  # noqa: PLC0415 - the dicom extra

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < frames:
        raise ValueError(f"frame {frame} out of range (the image has {frames})")
    if frames > 1:
        return pixel_array(ds, index=frame)
    return ds.pixel_array


def to_png(
    ds: Any,
    *,
    frame: int = 0,
    default_windows: dict[str, Window] | None = None,
    regions: Sequence[Region] = (),
) -> bytes:
    """The frame as an 8-bit PNG (grayscale, or RGB for colour images)."""
    import numpy as np  # noqa: PLC0415 - the dicom extra
    from pydicom.pixels.processing import apply_modality_lut  # noqa: PLC0415

    arr = np.asarray(frame_array(ds, frame))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 1 and photometric == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut  # noqa: PLC0415

        arr = np.asarray(apply_color_lut(arr, ds))
        samples = 3
    if samples == 3:  # pydicom decodes YBR as RGB already
        image = _to_uint8_color(arr)
    else:
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        window = _window(ds, default_windows or {})
        image = _to_uint8(values, window)
        if photometric == "MONOCHROME1":
            image = 255 - image
    for r in regions:
        image[max(r.y, 0) : r.y + r.height, max(r.x, 0) : r.x + r.width] = 0
    return encode_png(image)


def _window(ds: Any, defaults: dict[str, Window]) -> Window | None:
    modality = str(ds.get("Modality", "") or "").upper()
    if modality not in ("CT", "MR"):
        return None
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = center[0] if _multi(center) else center
        w = width[0] if _multi(width) else width
        try:
            if float(w) > 0:
                return Window(float(c), float(w))
        except (TypeError, ValueError):
            pass
    return defaults.get(modality)


def _multi(value: Any) -> bool:
    return not isinstance(value, str | bytes | int | float) and hasattr(value, "__getitem__")


def _to_uint8(values: Any, window: Window | None) -> Any:
    import numpy as np  # noqa: PLC0415 - the dicom extra

    if window is not None:  # PS3.3 C.11.2.1.2, linear
        low = window.center - 0.5 - (window.width - 1) / 2
        high = window.center - 0.5 + (window.width - 1) / 2
    else:
        low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.clip(values, low, high) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


def _to_uint8_color(arr: Any) -> Any:
    import numpy as np  # noqa: PLC0415 - the dicom extra

    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    top = float(np.max(arr)) or 1.0
    return np.rint(arr.astype(np.float64) * (255.0 / top)).astype(np.uint8)


def encode_png(image: Any) -> bytes:
    """An 8-bit grayscale (H, W) or RGB (H, W, 3) array as PNG bytes."""
    import numpy as np  # noqa: PLC0415 - the dicom extra

    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim == 2:
        height, width = image.shape
        color_type = 0
    elif image.ndim == 3 and image.shape[2] == 3:
        height, width = image.shape[:2]
        color_type = 2
    else:
        raise ValueError(f"can't write an image of shape {image.shape} as PNG")
    rows = image.reshape(height, -1)
    raw = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    raw[:, 0] = 0  # filter type None on every row
    raw[:, 1:] = rows
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join(
        [
            _PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)),
            _chunk(b"IEND", b""),
        ]
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def summary(ds: Any) -> str:
    """The de-identified header as ``Keyword: value`` lines: the public attributes at the
    top level that hold text or numbers (no UIDs, sequences, bulk data or private tags)."""
    lines = ["DICOM header (de-identified, PS3.15 Annex E Basic Profile):"]
    for elem in ds:
        if elem.tag.is_private or elem.VR in _SUMMARY_SKIP_VRS or not elem.keyword:
            continue
        if int(elem.tag) >> 16 in (0x0002, 0x7FE0) or elem.value in (None, "", b""):
            continue
        value = elem.value
        text = "\\".join(str(v) for v in value) if _multi(value) else str(value)
        if text in _PLACEHOLDERS:
            continue  # a dummy the profile wrote says nothing to the model
        lines.append(f"{elem.keyword}: {text[:_SUMMARY_MAX_VALUE]}")
    return "\n".join(lines)
