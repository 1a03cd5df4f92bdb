"""HTTP calls to OpenAI-compatible upstreams (local model servers and the cloud).

Both kinds speak the same protocol, so one client serves both. A streamed call returns only
once the upstream has answered with its status line: until then nothing has been sent to the
app, and the caller can still fall back to another target.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

# Statuses worth another try at the same upstream (rate limited, overloaded, restarting).
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
BACKOFF_BASE_S = 0.2
BACKOFF_MAX_S = 5.0
# SSE lines from a well-behaved server are small; a bigger line is a broken upstream.
MAX_SSE_LINE_BYTES = 1 << 20


class UpstreamError(Exception):
    """A call that produced no usable answer.

    ``kind`` is ``connect`` (nothing reached the server: safe to retry anywhere),
    ``timeout``, ``status`` (an HTTP error status) or ``protocol`` (an unparsable answer).
    """

    def __init__(
        self, kind: str, message: str, *, status: int | None = None, body: Any = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.body = body

    @property
    def server_side(self) -> bool:
        """The upstream failed (as opposed to refusing this particular request)."""
        return (
            self.kind != "status"
            or self.status is None
            or self.status >= 500
            or (self.status == 429)
        )

    @property
    def retryable(self) -> bool:
        return self.kind in ("connect", "timeout") or self.status in RETRYABLE_STATUSES


@dataclass
class StreamHandle:
    """An open SSE stream whose status was 200; iterate :meth:`events`, then close."""

    response: aiohttp.ClientResponse

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Parsed ``data:`` payloads up to ``[DONE]`` or the end of the body."""
        try:
            async for raw in self.response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # comments, event names, keep-alives
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError as exc:
                    raise UpstreamError("protocol", "upstream sent an invalid SSE event") from exc
                if isinstance(event, dict):
                    yield event
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError("connect", f"stream broken: {type(exc).__name__}") from exc
        finally:
            self.close()

    def close(self) -> None:
        self.response.release()


def _error_message(body: Any, status: int) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))[:500] or f"HTTP {status}"
    return f"HTTP {status}"


class Upstream:
    """One aiohttp session for all upstream calls (connection reuse per host)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    @classmethod
    def create(cls, *, connect_timeout_s: float, max_connections: int = 512) -> Upstream:
        connector = aiohttp.TCPConnector(limit=max_connections, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout_s)
        return cls(aiohttp.ClientSession(connector=connector, timeout=timeout))

    async def close(self) -> None:
        await self._session.close()

    async def _post(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str], timeout_s: float
    ) -> aiohttp.ClientResponse:
        try:
            resp = await self._session.post(
                url,
                json=body,
                headers=dict(headers),
                timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=None),
            )
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
            raise UpstreamError("connect", f"cannot connect: {type(exc).__name__}") from exc
        except TimeoutError as exc:
            raise UpstreamError("timeout", f"no answer within {timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("connect", f"request failed: {type(exc).__name__}") from exc
        if resp.status >= 400:
            try:
                err_body: Any = await resp.json(content_type=None)
            except (TimeoutError, ValueError, aiohttp.ClientError):
                err_body = None
            finally:
                resp.release()
            raise UpstreamError(
                "status", _error_message(err_body, resp.status), status=resp.status, body=err_body
            )
        return resp

    async def post_json(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str], timeout_s: float
    ) -> dict[str, Any]:
        """POST and return the JSON answer; raises UpstreamError."""
        resp = await self._post(url, body, headers, timeout_s)
        try:
            data: Any = await resp.json(content_type=None)
        except ValueError as exc:
            raise UpstreamError("protocol", "upstream answered with invalid JSON") from exc
        except TimeoutError as exc:
            raise UpstreamError("timeout", f"no complete answer within {timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("connect", f"answer broken: {type(exc).__name__}") from exc
        finally:
            resp.release()
        if not isinstance(data, dict):
            raise UpstreamError("protocol", "upstream answered with a non-object JSON")
        return data

    async def open_stream(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str], timeout_s: float
    ) -> StreamHandle:
        """POST a streaming request; returns once the upstream answered 200."""
        resp = await self._post(url, body, headers, timeout_s)
        return StreamHandle(resp)


def backoff_delay(attempt: int) -> float:
    """Delay before retry ``attempt`` (1-based): exponential with full jitter."""
    return random.uniform(0, min(BACKOFF_BASE_S * 2 ** (attempt - 1), BACKOFF_MAX_S))
