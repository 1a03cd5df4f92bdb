"""Dynamic batching: concurrent requests for one model merged along dim 0 into one run.

Each served model has one :class:`Batcher` with a bounded queue (full -> QueueFull, i.e.
429 / RESOURCE_EXHAUSTED, never unbounded memory) and one worker task. The worker takes the
first waiting request, gathers more for up to ``max_delay_s`` or until ``max_batch_size``
rows, runs onnxruntime in the executor so the event loop stays free, and splits the outputs
back by row. Requests only merge when the model's dim 0 is dynamic and their other
dimensions and datatypes agree; anything else runs alone through the same queue. A decoder's
steps (decoder_spec.py) also merge when only their KV cache lengths differ: each is
left-padded to the longest with entries the attention mask hides, and the padding is cut
off its presents again, so generations at different lengths share runs. An encoder's
requests (embedding_spec.py) merge across text lengths the same way, right-padded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from clawdbot_runtime.errors import ExecutionError, InferenceError, QueueFull, ServerDraining
from clawdbot_runtime.metrics import RuntimeMetrics
from clawdbot_runtime.model import OnnxModel
from clawdbot_runtime.tensors import Array

log = logging.getLogger(__name__)

Signature = tuple[tuple[str, str, tuple[int, ...]], ...]


class RowMerger(Protocol):
    """How a model's requests merge although their shapes differ beyond dim 0 (padding)."""

    def merge_signature(self, feeds: dict[str, Array], outputs: Sequence[str]) -> Signature:
        """What requests must share to merge into one run."""

    def merge_steps(self, steps: list[dict[str, Array]]) -> tuple[dict[str, Array], list[int]]:
        """The merged feeds, and the padding each request got."""

    def unpad(self, outputs: dict[str, Array], pad: int) -> dict[str, Array]:
        """One request's outputs without its padding."""


def row_merger(model: OnnxModel) -> RowMerger | None:
    """The model's padding merger: a decoder's cache padding, an encoder's text padding."""
    if model.decoder is not None and model.decoder.spec.pads_cache:
        return model.decoder.spec
    if model.embedding is not None:
        return model.embedding.spec
    return None


@dataclass
class _Pending:
    feeds: dict[str, Array]
    outputs: tuple[str, ...]
    future: asyncio.Future[dict[str, Array]]
    # Rows along dim 0 when the request may merge with others; None runs it alone.
    rows: int | None
    signature: Signature = field(default=())


class Batcher:
    """Queue and worker for one model version."""

    def __init__(
        self,
        model: OnnxModel,
        executor: Executor,
        metrics: RuntimeMetrics,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_size: int,
    ) -> None:
        self.model = model
        self._executor = executor
        self._metrics = metrics
        self.max_batch_size = max_batch_size if model.batchable else 1
        self._merger = row_merger(model)
        self._max_delay_s = max_delay_s
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue_size)
        self._carry: _Pending | None = None
        self._closed = False
        self._worker: asyncio.Task[None] | None = None
        self._depth = metrics.queue_depth.labels(model=model.name)
        self._batch_rows = metrics.batch_size.labels(model=model.name)
        self._batch_requests = metrics.requests_per_batch.labels(model=model.name)
        self._compute = metrics.compute_latency.labels(model=model.name)

    def start(self) -> None:
        """Start the worker task on the running loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name=f"batcher-{self.model.name}-{self.model.version}"
            )

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return self._queue.qsize() + (1 if self._carry is not None else 0)

    async def submit(self, feeds: dict[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        """Queue validated feeds and wait for this request's slice of the outputs."""
        if self._closed:
            raise ServerDraining(f"model '{self.model.name}' is being unloaded; retry")
        future: asyncio.Future[dict[str, Array]] = asyncio.get_running_loop().create_future()
        pending = _Pending(feeds=feeds, outputs=tuple(outputs), future=future, rows=None)
        if self.max_batch_size > 1:
            rows = {array.shape[0] for array in feeds.values()}
            if len(rows) == 1:
                pending.rows = rows.pop()
                if self._merger is not None:
                    pending.signature = self._merger.merge_signature(feeds, pending.outputs)
                else:
                    pending.signature = tuple(
                        (name, str(a.dtype), tuple(a.shape[1:]))
                        for name, a in sorted(feeds.items())
                    )
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise QueueFull(
                f"model '{self.model.name}' has {self._queue.maxsize} requests queued; retry later"
            ) from None
        self._depth.set(self.depth)
        return await future

    async def close(self) -> None:
        """Refuse new requests, finish the queued ones, stop the worker."""
        self._closed = True
        if self._worker is None:
            return
        await self._queue.join()
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._worker = None

    async def _first(self) -> _Pending:
        """The request that opens the next batch: the carried-over one, or wait for one."""
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        return await self._queue.get()

    async def _more(self, wait_s: float) -> _Pending | None:
        """Another request for the batch being formed, or None once ``wait_s`` runs out.

        Requests already queued are taken without waiting, so with a zero delay the batch
        is whatever piled up while the previous one ran (batching under load only).
        """
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if wait_s <= 0:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), wait_s)
        except TimeoutError:
            return None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._first()
            batch = [first]
            if first.rows is not None and first.rows < self.max_batch_size:
                rows = first.rows
                deadline = loop.time() + self._max_delay_s
                while rows < self.max_batch_size:
                    item = await self._more(deadline - loop.time())
                    if item is None:
                        break
                    if (
                        item.rows is None
                        or item.signature != first.signature
                        or rows + item.rows > self.max_batch_size
                    ):
                        # Does not fit: it opens the next batch instead.
                        self._carry = item
                        break
                    batch.append(item)
                    rows += item.rows
            self._depth.set(self.depth)
            try:
                await self._run(batch)
            except Exception as exc:
                # A bug here must fail these requests, not stop the worker and hang the rest.
                log.exception("batch failed", extra={"model": self.model.name})
                failure = ExecutionError(f"model '{self.model.name}' failed to run: {exc}")
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(failure)
            finally:
                # task_done for every item taken from the queue: close() waits on join().
                for _ in batch:
                    self._queue.task_done()

    async def _run(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # callers may have gone away
        if not live:
            return
        outputs = tuple(dict.fromkeys(name for p in live for name in p.outputs))
        pads = [0] * len(live)
        if len(live) == 1:
            feeds = live[0].feeds
        elif self._merger is not None:
            feeds, pads = self._merger.merge_steps([p.feeds for p in live])
        else:
            feeds = {name: np.concatenate([p.feeds[name] for p in live]) for name in live[0].feeds}
        rows = sum(p.rows or 0 for p in live) if len(live) > 1 else None
        try:
            results = await self._execute(feeds, outputs, rows or _rows(feeds))
        except InferenceError as exc:
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        self._batch_requests.observe(len(live))
        if len(live) == 1:
            _resolve(live[0], results)
            return
        if any(len(r.shape) == 0 or r.shape[0] != rows for r in results.values()):
            # The model's outputs are not per-row after all: run the requests one by one.
            log.warning(
                "batched outputs not split by row; running separately",
                extra={"model": self.model.name},
            )
            for p in live:
                try:
                    _resolve(p, await self._execute(p.feeds, p.outputs, p.rows or 1))
                except InferenceError as exc:
                    if not p.future.done():
                        p.future.set_exception(exc)
            return
        start = 0
        for p, pad in zip(live, pads, strict=True):
            stop = start + (p.rows or 0)
            rows_out = {name: value[start:stop] for name, value in results.items()}
            if pad and self._merger is not None:
                rows_out = self._merger.unpad(rows_out, pad)
            _resolve(p, rows_out)
            start = stop

    async def _execute(
        self, feeds: dict[str, Array], outputs: tuple[str, ...], rows: int
    ) -> dict[str, Array]:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.model.run, feeds, outputs)
        except Exception as exc:
            log.error(
                "inference failed",
                extra={"model": self.model.name, "version": self.model.version, "error": str(exc)},
            )
            raise ExecutionError(f"model '{self.model.name}' failed to run: {exc}") from exc
        self._compute.observe(time.perf_counter() - started)
        self._batch_rows.observe(rows)
        return results


def _rows(feeds: dict[str, Array]) -> int:
    for array in feeds.values():
        return int(array.shape[0]) if array.ndim else 1
    return 1


def _resolve(pending: _Pending, results: dict[str, Array]) -> None:
    if not pending.future.done():
        pending.future.set_result({name: results[name] for name in pending.outputs})
