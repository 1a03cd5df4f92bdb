"""One call to the local pool: the least-loaded replica, others on connection failure."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from clawdbot_api.openai_wire import usage_of
from clawdbot_sidecar.accounting.ledger import Outcome
from clawdbot_sidecar.config import Limits
from clawdbot_sidecar.upstream.client import Upstream, UpstreamError
from clawdbot_sidecar.upstream.pool import LocalPool, NoEndpoint
from clawdbot_sidecar.upstream.stream import relay

__all__ = ["LOCAL_CONNECT_RETRIES", "LocalTarget", "Reply", "with_stream_usage"]

log = logging.getLogger("clawdbot.sidecar")

# Local attempts on connection failure: the first endpoint and up to this many others.
LOCAL_CONNECT_RETRIES = 2


@dataclass(slots=True)
class Reply:
    """A target's answer: a JSON body, or chunk dicts as they arrive."""

    body: dict[str, Any] | None = None
    chunks: AsyncIterator[dict[str, Any]] | None = None


def with_stream_usage(body: Mapping[str, Any]) -> dict[str, Any]:
    """Ask for usage in a stream's final chunk, so streamed answers are accounted too."""
    if not body.get("stream") or "stream_options" in body:
        return dict(body)
    return {**body, "stream_options": {"include_usage": True}}


class LocalTarget:
    """The local model endpoints behind the policy."""

    def __init__(self, pool: LocalPool, client: Upstream) -> None:
        self.pool = pool
        self.client = client

    async def call(self, body: Mapping[str, Any], limits: Limits, out: Outcome) -> Reply:
        """Answer from a local endpoint; raises NoEndpoint or UpstreamError.

        A replica that refuses the connection (or never accepts it) is left for another,
        up to :data:`LOCAL_CONNECT_RETRIES` more: nothing reached it, so the retry is safe.
        """
        tried: set[str] = set()
        wants_usage = "stream_options" in body
        for _ in range(1 + LOCAL_CONNECT_RETRIES):
            state = self.pool.pick(exclude=tried, model=out.model)
            tried.add(state.endpoint.url)
            url = f"{state.endpoint.url.rstrip('/')}/{out.endpoint}"
            request = with_stream_usage({**body, "model": state.endpoint.model})
            started = self.pool.begin(state)
            try:
                if out.stream:
                    handle = await self.client.open_stream(
                        url, request, {}, limits.local_timeout_s, limits.local_connect_timeout_s
                    )
                    out.local_endpoint = state
                    finish = functools.partial(self.pool.end, state, started)
                    return Reply(
                        chunks=relay(handle, None, out, wants_usage=wants_usage, finish=finish)
                    )
                result = await self.client.post_json(
                    url, request, {}, limits.local_timeout_s, limits.local_connect_timeout_s
                )
            except UpstreamError as exc:
                self.pool.end(state, started, ok=exc.kind == "status" and exc.status == 400)
                if exc.kind != "connect":
                    raise
                log.warning("local endpoint %s unreachable, trying another", state.endpoint.url)
                continue
            self.pool.end(state, started, ok=True)
            out.local_endpoint = state
            out.prompt_tokens, out.completion_tokens = usage_of(result)
            return Reply(body=result)
        raise NoEndpoint(f"no local endpoint accepted a connection (tried {len(tried)})")
