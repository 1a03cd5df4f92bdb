"""Relaying an upstream's event stream to the app as chunk dicts, restored on the way."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

from clawdbot_api.openai_wire import usage_of
from clawdbot_sidecar.accounting.ledger import Outcome
from clawdbot_sidecar.errors import StreamBroken
from clawdbot_sidecar.redaction import Restorer
from clawdbot_sidecar.upstream.client import StreamHandle, UpstreamError

__all__ = ["relay"]


async def relay(
    handle: StreamHandle,
    restorer: Restorer | None,
    out: Outcome,
    *,
    wants_usage: bool,
    finish: Callable[[bool], None] | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """The upstream's chunks, restored, without the usage chunk the app didn't ask for.

    Usage is recorded in ``out`` either way (the sidecar asks for it to account streams).
    An upstream that breaks off mid-stream raises :class:`StreamBroken` after the chunks
    that did arrive. ``finish(ok)`` runs once when the stream ends, also when the app left.
    """
    chunks = restorer.chunks() if restorer is not None else None
    last: dict[str, Any] | None = None
    ok = False
    try:
        async for received in handle.events():
            prompt, completion = usage_of(received)
            if prompt or completion:
                out.prompt_tokens, out.completion_tokens = prompt, completion
            event = chunks.feed(received) if chunks is not None else received
            last = event
            if not event.get("choices") and "usage" in event and not wants_usage:
                continue
            yield event
        if chunks is not None:
            tail = chunks.flush(last)
            if tail is not None:
                yield tail
        ok = True
    except UpstreamError as exc:
        out.status, out.error = 502, exc.kind
        raise StreamBroken(str(exc), exc.kind) from exc
    finally:
        handle.close()  # also when the app left: the upstream stops generating for it
        if finish is not None:
            finish(ok or out.discarded)
