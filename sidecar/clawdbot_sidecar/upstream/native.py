"""Relaying a cloud's Responses or Messages event stream, restored on the way.

The counterpart of :mod:`clawdbot_sidecar.upstream.stream` for requests a cloud endpoint
takes in their own API (``cloud.api``): the events are passed on in that API's shape, with
placeholders restored, and the usage they report is recorded for accounting.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from clawdbot_sidecar.accounting.ledger import Outcome
from clawdbot_sidecar.errors import StreamBroken
from clawdbot_sidecar.redaction import Restorer
from clawdbot_sidecar.redaction.native import NativeEventRestorer, native_usage
from clawdbot_sidecar.upstream.client import StreamHandle, UpstreamError

__all__ = ["native_relay", "record_usage"]


def record_usage(answer: dict[str, Any], out: Outcome) -> None:
    """Note the tokens an answer or event reports (what it leaves out stays as it was)."""
    prompt, completion = native_usage(answer)
    if prompt is not None:
        out.prompt_tokens = prompt
    if completion is not None:
        out.completion_tokens = completion


async def native_relay(
    handle: StreamHandle, restorer: Restorer | None, out: Outcome
) -> AsyncGenerator[dict[str, Any], None]:
    """The upstream's events, restored; :class:`StreamBroken` if it breaks off."""
    events = NativeEventRestorer(restorer) if restorer is not None else None
    try:
        async for received in handle.events():
            record_usage(received, out)
            for event in events.feed(received) if events is not None else (received,):
                yield event
        if events is not None:
            for event in events.flush():
                yield event
    except UpstreamError as exc:
        out.status, out.error = 502, exc.kind
        raise StreamBroken(str(exc), exc.kind) from exc
    finally:
        handle.close()  # also when the app left: the upstream stops generating for it
