"""A bounded parser of ``multipart/form-data`` bodies (RFC 7578), for the audio routes.

The body is already bounded by the HTTP server's limit (it is read whole before this runs);
the parser adds bounds of its own on what a hostile body could multiply: the number of
parts, the size of each part's headers and of each text field, and the length of the
boundary. It scans the body once with ``bytes.find`` (linear time, no backtracking) and
copies each part's content once. Anything malformed is a :class:`FormError` naming the
problem, which the front answers with 400.

Encoding a form again for the upstream is ``clawdbot_sidecar.upstream.form``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

__all__ = ["FormError", "Part", "boundary_of", "parse_form"]

MAX_PARTS: Final = 64
# Headers of one part (Content-Disposition, Content-Type): a few hundred bytes in practice.
MAX_PART_HEADER_BYTES: Final = 8 * 1024
# A text field (prompt, language...); the file is bounded only by the body limit.
MAX_FIELD_BYTES: Final = 64 * 1024
MAX_BOUNDARY_CHARS: Final = 70  # RFC 2046
_BOUNDARY_CHARS: Final = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]*[0-9A-Za-z'()+_,\-./:=?]$")
_PARAM: Final = re.compile(
    r';\s*([A-Za-z0-9_*\-]+)\s*=\s*(?:"((?:[^"\\\r\n]|\\.)*)"|([^;\s"]*))', re.DOTALL
)


class FormError(ValueError):
    """A body that is not valid multipart/form-data (or exceeds a bound)."""


@dataclass(frozen=True, slots=True)
class Part:
    """One form field: its name, content, and for a file its filename and type."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None

    def text(self) -> str:
        """The content as text (UTF-8)."""
        try:
            return self.data.decode()
        except UnicodeDecodeError as exc:
            raise FormError(f"form field {self.name!r} is not UTF-8 text") from exc


def boundary_of(content_type: str | None) -> str:
    """The boundary of a ``multipart/form-data`` Content-Type; FormError if there is none."""
    if not content_type:
        raise FormError("the request needs Content-Type: multipart/form-data")
    kind, _, rest = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise FormError(f"the request must be multipart/form-data, not {kind.strip()!r}")
    params = _params(";" + rest)
    boundary = params.get("boundary")
    if not boundary:
        raise FormError("the multipart/form-data Content-Type has no boundary")
    if len(boundary) > MAX_BOUNDARY_CHARS or not _BOUNDARY_CHARS.match(boundary):
        raise FormError("the multipart boundary is not a valid RFC 2046 boundary")
    return boundary


def parse_form(body: bytes, boundary: str) -> list[Part]:
    """The parts of ``body``, in order; FormError on a malformed or oversized form."""
    delimiter = b"--" + boundary.encode("ascii")
    if body.startswith(delimiter):
        pos = len(delimiter)
    else:  # a preamble (allowed, ignored) ends with the line break before the delimiter
        found = body.find(b"\r\n" + delimiter)
        if found == -1:
            raise FormError("the body holds no part of the declared boundary")
        pos = found + 2 + len(delimiter)
    between = b"\r\n" + delimiter
    parts: list[Part] = []
    while True:
        if body.startswith(b"--", pos):
            return parts  # the close delimiter; an epilogue after it is ignored
        pos = _line_end(body, pos)
        head_end = body.find(b"\r\n\r\n", pos, pos + MAX_PART_HEADER_BYTES + 4)
        if head_end == -1:
            raise FormError(
                f"a part's headers are not terminated within {MAX_PART_HEADER_BYTES} bytes"
            )
        headers = _headers(body[pos:head_end])
        start = head_end + 4
        end = body.find(between, start)
        if end == -1:
            raise FormError("the form is not terminated by its close delimiter")
        if len(parts) >= MAX_PARTS:
            raise FormError(f"the form has more than {MAX_PARTS} parts")
        parts.append(_part(headers, body[start:end]))
        pos = end + len(between)


def _line_end(body: bytes, pos: int) -> int:
    """After a delimiter: optional whitespace, then CRLF (RFC 2046's transport padding)."""
    end = body.find(b"\r\n", pos, pos + 256)
    if end == -1 or body[pos:end].strip(b" \t"):
        raise FormError("a multipart delimiter is not followed by a line break")
    return end + 2


def _headers(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormError("a part's headers are not UTF-8") from exc
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise FormError("a part has a malformed header line")
        out[name.strip().lower()] = value.strip()
    return out


def _part(headers: Mapping[str, str], data: bytes) -> Part:
    disposition = headers.get("content-disposition", "")
    kind, _, rest = disposition.partition(";")
    if kind.strip().lower() != "form-data":
        raise FormError("each part needs Content-Disposition: form-data")
    params = _params(";" + rest)
    name = params.get("name")
    if not name:
        raise FormError("a part's Content-Disposition has no name")
    filename = params.get("filename*") or params.get("filename")
    if filename is None and len(data) > MAX_FIELD_BYTES:
        raise FormError(f"form field {name!r} is longer than {MAX_FIELD_BYTES} bytes")
    return Part(name, data, filename, headers.get("content-type"))


def _params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _PARAM.finditer(text):
        key = m.group(1).lower()
        value = m.group(2) if m.group(2) is not None else m.group(3) or ""
        if m.group(2) is not None:
            value = re.sub(r"\\(.)", r"\1", value)
        if key.endswith("*"):  # RFC 5987: charset'language'percent-encoded
            charset, _, encoded = value.partition("'")
            _, _, encoded = encoded.partition("'")
            value = unquote(encoded, encoding=charset or "utf-8", errors="replace")
        out[key] = value
    return out
