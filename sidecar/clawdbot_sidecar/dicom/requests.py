"""DICOM parts in OpenAI chat requests, and the cloud-bound copy that carries none.

A chat message's content part is DICOM when it is

* a ``file`` part whose ``file.file_data`` is a ``data:application/dicom;base64,...`` URL,
  or plain base64 (or a data URL of another type) whose bytes are a DICOM Part 10 file
  (the ``DICM`` magic after the 128-byte preamble);
* an ``image_url`` part whose ``image_url.url`` is a ``data:application/dicom`` URL.

:func:`rewrite_for_cloud` replaces each with two parts, an ``image_url`` PNG data URL and
a ``text`` part holding the de-identified header's summary, and returns a second copy
without the PNG parts for the walk that decides routing: the summary is text like any
other (rules, redaction), the PNG is what the profile made of the image, not content to
refuse as uninspectable. A part that can't be converted raises
:class:`~clawdbot_sidecar.dicom.convert.DicomRefused`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from clawdbot_sidecar.dicom.convert import Converted, DicomRefused, is_dicom

__all__ = ["CloudCopy", "dicom_payload", "has_dicom", "rewrite_for_cloud"]

_MEDIA: Final = "application/dicom"
# Base64 characters enough to decode the preamble and the DICM magic.
_SNIFF_CHARS: Final = 176


@dataclass(slots=True)
class CloudCopy:
    """The cloud-bound request, the copy routing walks, and one result per DICOM part."""

    body: dict[str, Any]
    inspected: dict[str, Any]
    converted: list[Converted] = field(default_factory=list)


def _data_url(value: str) -> tuple[str, str] | None:
    """(media type, base64 payload) of a base64 data URL."""
    if not value.startswith("data:"):
        return None
    head, sep, payload = value.partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[5:-7].split(";")[0].strip().lower(), payload


def _sniff(payload: str) -> bool:
    head = payload[:_SNIFF_CHARS]
    try:
        return is_dicom(base64.b64decode(head[: len(head) - len(head) % 4], validate=False))
    except (binascii.Error, ValueError):
        return False


def dicom_payload(part: Mapping[str, Any]) -> str | None:
    """The base64 of the DICOM file a content part carries, or None if it carries none."""
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, Mapping) else None
        parsed = _data_url(url) if isinstance(url, str) else None
        return parsed[1] if parsed is not None and parsed[0] == _MEDIA else None
    if kind == "file":
        file = part.get("file")
        data = file.get("file_data") if isinstance(file, Mapping) else None
        if not isinstance(data, str):
            return None
        parsed = _data_url(data)
        if parsed is not None:
            return parsed[1] if parsed[0] == _MEDIA or _sniff(parsed[1]) else None
        return data if _sniff(data) else None
    return None


def _messages(body: Mapping[str, Any]) -> list[Any]:
    messages = body.get("messages")
    return messages if isinstance(messages, list) else []


def has_dicom(body: Mapping[str, Any]) -> bool:
    """Whether a chat request carries a DICOM part."""
    for message in _messages(body):
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list) and any(
            isinstance(p, Mapping) and dicom_payload(p) is not None for p in content
        ):
            return True
    return False


def rewrite_for_cloud(body: Mapping[str, Any], convert: Callable[[bytes], Converted]) -> CloudCopy:
    """The request with every DICOM part converted (raises DicomRefused for one that can't be)."""
    copy = CloudCopy(body=dict(body), inspected=dict(body))
    cloud_messages: list[Any] = []
    seen_messages: list[Any] = []
    for message in _messages(body):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, list):
            cloud_messages.append(message)
            seen_messages.append(message)
            continue
        cloud_parts: list[Any] = []
        seen_parts: list[Any] = []
        for part in content:
            payload = dicom_payload(part) if isinstance(part, Mapping) else None
            if payload is None:
                cloud_parts.append(part)
                seen_parts.append(part)
                continue
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise DicomRefused("dicom-bad-base64") from exc
            result = convert(data)
            copy.converted.append(result)
            png = base64.b64encode(result.png).decode("ascii")
            text = {"type": "text", "text": result.summary}
            cloud_parts += [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                text,
            ]
            seen_parts.append(text)
        cloud_messages.append({**message, "content": cloud_parts})
        seen_messages.append({**message, "content": seen_parts})
    copy.body["messages"] = cloud_messages
    copy.inspected["messages"] = seen_messages
    return copy
