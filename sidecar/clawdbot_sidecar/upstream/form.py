"""Audio requests as ``multipart/form-data``, the way OpenAI's audio endpoints take them.

The audio fronts hand the core a body whose ``file`` is an ``input_audio`` part holding the
bytes (the walker reports it as audio it can't inspect, and leaves it alone); the targets
encode that body again as a form for the speech server or the cloud.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["audio_file", "encode_form"]


def audio_file(data: bytes, filename: str, content_type: str | None) -> dict[str, Any]:
    """The ``file`` of an audio body: an ``input_audio`` part carrying the bytes."""
    fmt = filename.rpartition(".")[2].lower() if "." in filename else "wav"
    return {
        "type": "input_audio",
        "input_audio": {"data": data, "format": fmt},
        "filename": filename,
        "content_type": content_type or "application/octet-stream",
    }


def encode_form(body: Mapping[str, Any]) -> tuple[str, bytes]:
    """(Content-Type, payload) of an audio body: its fields as text parts (lists as
    repeated ``name[]`` parts), its ``file`` as a file part."""
    boundary = f"clawdbot-{os.urandom(16).hex()}"
    chunks: list[bytes] = []
    for name, value in body.items():
        if name == "file" or value is None:
            continue
        values = value if isinstance(value, list) else [value]
        key = f"{name}[]" if isinstance(value, list) else name
        for item in values:
            chunks += [_head(boundary, key, None, None), _text(item).encode(), b"\r\n"]
    file = body.get("file")
    if isinstance(file, Mapping):
        audio = file.get("input_audio") or {}
        data = audio.get("data")
        if isinstance(data, bytes):
            filename = str(file.get("filename") or "audio")
            chunks += [_head(boundary, "file", filename, str(file.get("content_type") or "")),
                       data, b"\r\n"]  # fmt: skip
    chunks.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _quoted(value: str) -> str:
    # A quote or a line break can't stand in a quoted header parameter.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")


def _head(boundary: str, name: str, filename: str | None, content_type: str | None) -> bytes:
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"'
    if filename is not None:
        head += f'; filename="{_quoted(filename)}"'
    head += "\r\n"
    if content_type:
        head += f"Content-Type: {_quoted(content_type)}\r\n"
    return (head + "\r\n").encode()
