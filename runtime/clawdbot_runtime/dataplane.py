"""The one data plane both protocol fronts adapt: health, metadata, inference, drain.

REST, gRPC and the OpenAI routes decode their wire format into an :class:`InferenceRequest`
and encode the :class:`InferenceResponse`; everything in between (model lookup, validation,
batching, metrics, draining) happens here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from clawdbot_runtime import __version__
from clawdbot_runtime.errors import InferenceError, InvalidInput, ServerDraining
from clawdbot_runtime.metrics import UNKNOWN_MODEL, RuntimeMetrics
from clawdbot_runtime.repository import ModelManager, ServedModel
from clawdbot_runtime.tensors import Array

SERVER_NAME = "clawdbot-runtime"
EXTENSIONS = ["model_repository", "openai"]


@dataclass
class InferenceRequest:
    """A decoded v2 inference request."""

    model_name: str
    inputs: dict[str, Array]
    model_version: str | None = None
    id: str = ""
    outputs: list[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferenceResponse:
    """The outputs of one inference, in the order requested."""

    model_name: str
    model_version: str
    id: str
    outputs: dict[str, Array]


def add_input(inputs: dict[str, Array], name: Any, array: Array) -> None:
    """Add a decoded input, refusing a second tensor of the same name."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("every input needs a non-empty 'name'")
    if name in inputs:
        raise InvalidInput(f"input '{name}' is given more than once", param=name)
    inputs[name] = array


class DataPlane:
    """Model lookup, validation, batched execution and health for one server."""

    def __init__(self, manager: ModelManager, metrics: RuntimeMetrics) -> None:
        self.manager = manager
        self.metrics = metrics
        self._draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- health and metadata ---------------------------------------------------------------

    def live(self) -> bool:
        """The process is up and answering (true until it exits)."""
        return True

    def ready(self) -> bool:
        """Ready for traffic: initial models loaded and warmed up, not draining."""
        return not self._draining and self.manager.all_ready()

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether ``name`` is served and warmed up; ModelNotFound if it is unknown."""
        self.manager.entry(name)
        try:
            self.manager.get(name, version)
        except InferenceError:
            return False
        return not self._draining

    def server_metadata(self) -> dict[str, Any]:
        """The v2 server metadata document."""
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The v2 metadata of the served version of ``name``."""
        served = self.manager.get(name, version)
        return served.model.metadata(self.manager.entry(name).versions)

    # -- inference -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def request_scope(self, model: str, protocol: str) -> AsyncIterator[None]:
        """Count, time and drain-track one request; errors are recorded with their code."""
        label = model if self.manager.has(model) else UNKNOWN_MODEL
        started = time.perf_counter()
        code = "200"
        entered = False
        try:
            self._enter()
            entered = True
            yield
        except InferenceError as exc:
            code = str(exc.http_status)
            raise
        except asyncio.CancelledError:
            code = "499"  # the client went away (nginx's convention)
            raise
        except Exception:
            code = "500"
            raise
        finally:
            if entered:
                self._leave()
            self.metrics.requests.labels(model=label, protocol=protocol, code=code).inc()
            self.metrics.request_latency.labels(model=label, protocol=protocol).observe(
                time.perf_counter() - started
            )

    async def infer(self, request: InferenceRequest, protocol: str) -> InferenceResponse:
        """Validate ``request`` against its model, run it through the batcher, return outputs."""
        async with self.request_scope(request.model_name, protocol):
            return await self.execute(request)

    async def execute(self, request: InferenceRequest) -> InferenceResponse:
        """:meth:`infer` without the accounting, for fronts that opened a request_scope."""
        served = self.manager.get(request.model_name, request.model_version)
        outputs = await self.run(served, request.inputs, request.outputs)
        return InferenceResponse(
            model_name=request.model_name,
            model_version=str(served.model.version),
            id=request.id,
            outputs=outputs,
        )

    async def run(
        self, served: ServedModel, inputs: dict[str, Array], outputs: Sequence[str] | None
    ) -> dict[str, Array]:
        """Validate and run inputs on a served model (no request accounting)."""
        feeds, names = served.model.validate(inputs, outputs)
        return await served.batcher.submit(feeds, names)

    # -- draining --------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """Whether a drain has begun."""
        return self._draining

    @property
    def in_flight(self) -> int:
        """Requests currently being served."""
        return self._in_flight

    def begin_drain(self) -> None:
        """Turn unready and refuse new requests; in-flight ones carry on."""
        self._draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait for in-flight requests to finish; False if ``timeout_s`` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _enter(self) -> None:
        if self._draining:
            raise ServerDraining("server is shutting down; retry on another replica")
        self._in_flight += 1
        self._idle.clear()
        self.metrics.in_flight.set(self._in_flight)

    def _leave(self) -> None:
        self._in_flight -= 1
        self.metrics.in_flight.set(self._in_flight)
        if self._in_flight == 0:
            self._idle.set()
