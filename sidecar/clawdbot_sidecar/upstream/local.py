"""One call to the local pool: the least-loaded replica, others on connection failure or
when the replica stops answering (a liveness probe while a request waits on it)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from clawdbot_api.openai_wire import usage_of
from clawdbot_sidecar.accounting.ledger import Outcome
from clawdbot_sidecar.config import Limits
from clawdbot_sidecar.upstream.client import Upstream, UpstreamError
from clawdbot_sidecar.upstream.pool import EndpointState, LocalPool, NoEndpoint
from clawdbot_sidecar.upstream.stream import relay

__all__ = ["LOCAL_CONNECT_RETRIES", "LocalTarget", "Reply", "with_stream_usage"]

log = logging.getLogger("clawdbot.sidecar")
T = TypeVar("T")

# Local attempts when a replica can't take the request: the first and up to this many others.
LOCAL_CONNECT_RETRIES = 2
# Answers of a replica that refused the request without working on it (queue full, not
# ready yet, draining, a proxy that found no backend): safe to send to another replica.
REFUSED_STATUSES = frozenset({429, 502, 503})
# An ejected replica is asked every this often whether it serves again (GET <base>/models
# listing its model), so it is back in rotation within this of being ready, not after an
# ejection that doubles with each repeat.
PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 1.0
# A request a replica has not answered within this is checked on, and every this often
# after: the replica is asked for its model list (its event loop answers that while a
# generation runs in its worker threads). One that does not answer the check within
# LIVENESS_TIMEOUT_S is wedged (it accepted the connection and says nothing): it is
# ejected, and the requests waiting on it, which got no byte of answer, go to another
# replica (local inference has no side effect to repeat), instead of waiting out the
# whole local timeout (minutes, for long generations).
STALL_CHECK_S = 2.0
LIVENESS_TIMEOUT_S = 2.0


class Stalled(Exception):
    """The replica a request waits on failed its liveness check (see STALL_CHECK_S)."""


@dataclass(slots=True)
class _Watch:
    """One request's watch on its replica (see LocalTarget._watched)."""

    scope: asyncio.Timeout | None = None
    timer: asyncio.TimerHandle | None = None
    done: bool = False
    stalled: bool = False


@dataclass(slots=True)
class Reply:
    """A target's answer: a JSON body, or chunk dicts as they arrive."""

    body: dict[str, Any] | None = None
    chunks: AsyncIterator[dict[str, Any]] | None = None
    native: bool = False
    """In the shape of the request's own API (a cloud that took it natively)."""


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
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._checks: dict[str, asyncio.Task[bool]] = {}
        pool.on_eject = self._probe_soon

    def _probe_soon(self, state: EndpointState) -> None:
        url = state.endpoint.url
        if url in self._probes:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._probe(state))
        except RuntimeError:  # no loop (a test driving the pool by hand): the timer decides
            return
        self._probes[url] = task
        task.add_done_callback(lambda _: self._probes.pop(url, None))

    async def _probe(self, state: EndpointState) -> None:
        """Until the ejection ends, ask the replica whether it serves its model again."""
        url = f"{state.endpoint.url.rstrip('/')}/models"
        while self.pool.holds(state) and not state.healthy(time.monotonic()):
            await asyncio.sleep(PROBE_INTERVAL_S)
            try:
                listed = await self.client.get_json(url, PROBE_TIMEOUT_S, PROBE_TIMEOUT_S)
            except UpstreamError:
                continue
            data = listed.get("data")
            models = (
                {m.get("id") for m in data if isinstance(m, dict)}
                if isinstance(data, list)
                else set()
            )
            if state.endpoint.model in models:
                self.pool.readmit(state)
                return

    def close(self) -> None:
        """Stop probing ejected replicas."""
        for task in [*self._probes.values(), *self._checks.values()]:
            task.cancel()

    def _check_of(self, url: str) -> asyncio.Task[bool]:
        """The liveness check of the replica at ``url`` under way, or a new one: one at a
        time per replica, shared by the requests waiting on it."""
        check = self._checks.get(url)
        if check is None:
            check = asyncio.get_running_loop().create_task(self._check(url))
            self._checks[url] = check
            check.add_done_callback(lambda _: self._checks.pop(url, None))
        return check

    async def _check(self, url: str) -> bool:
        """Whether the replica answers a request for its model list within
        LIVENESS_TIMEOUT_S (any HTTP answer counts: it is not wedged)."""
        try:
            await self.client.get_json(
                f"{url.rstrip('/')}/models", LIVENESS_TIMEOUT_S, LIVENESS_TIMEOUT_S
            )
        except UpstreamError as exc:
            return exc.kind == "status"
        return True

    async def _watched(self, state: EndpointState, call: Awaitable[T]) -> T:
        """``call``'s result; raises Stalled once the replica fails a liveness check while
        the call still waits for its answer (the call is then cancelled).

        No task per request (this is every local request's path): a timer checks on the
        replica after STALL_CHECK_S, and a failed check expires the call's timeout scope
        now, which cancels the call the way asyncio.timeout does (so an app going away
        meanwhile is still a plain cancellation)."""
        loop = asyncio.get_running_loop()
        watch = _Watch()

        def checked(check: asyncio.Task[bool]) -> None:
            if watch.done or check.cancelled():
                return
            if check.result():  # alive: look again later
                watch.timer = loop.call_later(STALL_CHECK_S, due)
            else:
                watch.stalled = True
                assert watch.scope is not None
                watch.scope.reschedule(loop.time())

        def due() -> None:
            if not watch.done:
                self._check_of(state.endpoint.url).add_done_callback(checked)

        try:
            async with asyncio.timeout(None) as scope:
                watch.scope = scope
                watch.timer = loop.call_later(STALL_CHECK_S, due)
                try:
                    return await call
                finally:
                    watch.done = True
                    watch.timer.cancel()
        except TimeoutError:
            if watch.stalled:
                raise Stalled(state.endpoint.url) from None
            raise

    async def call(self, body: Mapping[str, Any], limits: Limits, out: Outcome) -> Reply:
        """Answer from a local endpoint; raises NoEndpoint or UpstreamError.

        A replica that refuses the connection (or never accepts it), or answers that it
        can't take the request now (:data:`REFUSED_STATUSES`: a replica still loading its
        model, draining, or with a full queue), is left for another, up to
        :data:`LOCAL_CONNECT_RETRIES` more: it did no work on the request, so the retry is
        safe, and a starting replica must not send traffic to the cloud while a ready one
        could answer.
        """
        tried: set[str] = set()
        last: UpstreamError | None = None
        wants_usage = "stream_options" in body
        for _ in range(1 + LOCAL_CONNECT_RETRIES):
            try:
                state = self.pool.pick(exclude=tried, model=out.model)
            except NoEndpoint:
                if last is not None and last.kind == "status":
                    raise last from None  # every replica refused it: its own answer
                raise
            tried.add(state.endpoint.url)
            url = f"{state.endpoint.url.rstrip('/')}/{out.endpoint}"
            request = with_stream_usage({**body, "model": state.endpoint.model})
            started = self.pool.begin(state)
            try:
                if out.stream:
                    # Watched until the answer's head: once events flow, the app has some
                    # of the answer and the request can't move.
                    handle = await self._watched(
                        state,
                        self.client.open_stream(
                            url, request, {}, limits.local_timeout_s,
                            limits.local_connect_timeout_s,
                        ),
                    )  # fmt: skip
                    out.local_endpoint = state
                    finish = functools.partial(self.pool.end, state, started)
                    return Reply(
                        chunks=relay(handle, None, out, wants_usage=wants_usage, finish=finish)
                    )
                result = await self._watched(
                    state,
                    self.client.post_json(
                        url, request, {}, limits.local_timeout_s, limits.local_connect_timeout_s
                    ),
                )
            except Stalled:
                self.pool.end(state, started, ok=False)
                if state.healthy(time.monotonic()):  # once, for all the requests it held
                    self.pool.eject(state)
                last = UpstreamError("timeout", f"local endpoint {state.endpoint.url} stalled")
                log.warning(
                    "local endpoint %s failed its liveness check, trying another",
                    state.endpoint.url,
                )
                continue
            except UpstreamError as exc:
                refused = exc.kind == "status" and exc.status in REFUSED_STATUSES
                # A 400 is the request's fault and a 429 a busy replica: neither is a broken
                # one to eject.
                healthy = exc.kind == "status" and exc.status in (400, 429)
                self.pool.end(state, started, ok=healthy)
                if exc.kind != "connect" and not refused:
                    raise
                last = exc
                log.warning(
                    "local endpoint %s %s, trying another",
                    state.endpoint.url,
                    f"answered {exc.status}" if refused else "unreachable",
                )
                continue
            self.pool.end(state, started, ok=True)
            out.local_endpoint = state
            out.prompt_tokens, out.completion_tokens = usage_of(result)
            return Reply(body=result)
        if last is not None and last.kind == "status":
            raise last  # every replica tried refused it: the upstream's own answer
        raise NoEndpoint(f"no local endpoint accepted a connection (tried {len(tried)})")
