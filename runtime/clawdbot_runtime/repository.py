"""The model repository on disk, and the manager that keeps the served versions current.

Layout (Triton/KServe style)::

    <repository>/<model-name>/<version>/model.onnx      version: a positive integer
    <repository>/<model-name>/<version>/generation.json  optional: makes it a /v1 text model
    <repository>/<model-name>/<version>/config.json, tokenizer.json, ...
                                                         or: an Optimum decoder or encoder export

The highest version folder of each model is served. A rescan (poll or explicit load) loads
a newer version, warms it up, then swaps it in while the old one finishes its queue; a
version that fails keeps its error on record and the previous version keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clawdbot_runtime.batching import Batcher
from clawdbot_runtime.config import RuntimeConfig
from clawdbot_runtime.errors import InferenceError, ModelLoadError, ModelNotFound, ModelNotReady
from clawdbot_runtime.metrics import RuntimeMetrics
from clawdbot_runtime.model import MODEL_FILE, OnnxModel, SessionSettings, fingerprint

log = logging.getLogger(__name__)

# Kubernetes-style names keep model names safe as URL segments, metric labels and folders.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def scan_versions(folder: Path) -> dict[int, Path]:
    """Version number -> version folder, for the version folders holding a model file."""
    versions: dict[int, Path] = {}
    if not folder.is_dir():
        return versions
    for child in folder.iterdir():
        if child.name.isdigit() and int(child.name) > 0 and (child / MODEL_FILE).is_file():
            versions[int(child.name)] = child
    return versions


def scan_models(root: Path) -> list[str]:
    """Names of the model folders in the repository."""
    if not root.is_dir():
        return []
    return sorted(c.name for c in root.iterdir() if c.is_dir() and _NAME.match(c.name))


@dataclass
class ServedModel:
    """A loaded, warmed-up model version and its batcher."""

    model: OnnxModel
    batcher: Batcher
    fingerprint: str
    loaded_at: float = field(default_factory=time.time)
    _leases: int = 0
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._released.set()

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Keep this version serving across many runs (a generation) even once replaced.

        A text generation runs the model once per token; swapping versions half-way would
        mix two models' output, so a retiring version waits for its leases to end.
        """
        self._leases += 1
        self._released.clear()
        try:
            yield
        finally:
            self._leases -= 1
            if self._leases == 0:
                self._released.set()

    async def wait_released(self, timeout_s: float) -> bool:
        """Wait until no lease is held; False if ``timeout_s`` ran out first."""
        try:
            await asyncio.wait_for(self._released.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


@dataclass
class ModelEntry:
    """What the server knows of one model name."""

    name: str
    served: ServedModel | None = None
    state: str = "LOADING"  # LOADING, READY or UNAVAILABLE (the v2 repository index states)
    reason: str = ""
    versions: list[int] = field(default_factory=list)
    # Version -> fingerprint of a file that failed, so a poll does not retry it until it changes.
    failed: dict[int, str] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ModelManager:
    """Loads, warms up, swaps and unloads model versions; the data plane reads from it."""

    def __init__(
        self,
        config: RuntimeConfig,
        settings: SessionSettings,
        executor: Executor,
        metrics: RuntimeMetrics,
    ) -> None:
        self.root = config.model_repository
        self._only = config.model
        self._config = config
        self._settings = settings
        self._executor = executor
        self._metrics = metrics
        self._entries: dict[str, ModelEntry] = {}
        self.initial_load_done = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], Awaitable[None]]] = []

    def add_listener(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call ``callback`` after the set of served models changed (e.g. to update health)."""
        self._listeners.append(callback)

    async def _changed(self) -> None:
        for callback in self._listeners:
            await callback()

    # -- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Model names known to the server."""
        return sorted(self._entries)

    def has(self, name: str) -> bool:
        """Whether the repository holds a model called ``name``."""
        return name in self._entries

    def served(self) -> list[ServedModel]:
        """Every model version currently served."""
        return [e.served for e in self._entries.values() if e.served is not None]

    def all_ready(self) -> bool:
        """True once the first scan is done and a warmed-up model is served.

        With ``--model`` that model must be the one served. Models added or failing later
        report their own readiness: flipping the whole pod unready because a new version
        is broken would take the version it still serves out of rotation.
        """
        if not self.initial_load_done.is_set():
            return False
        if self._only is not None:
            entry = self._entries.get(self._only)
            return entry is not None and entry.served is not None
        return bool(self.served())

    def entry(self, name: str) -> ModelEntry:
        """The entry for ``name``; ModelNotFound if there is none."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(f"model '{name}' is not in the repository")
        return entry

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The served version of ``name`` (checked against ``version`` when given)."""
        entry = self.entry(name)
        if version not in (None, ""):
            if not str(version).isdigit():
                raise ModelNotFound(f"model '{name}' has no version '{version}'")
            if int(str(version)) not in entry.versions:
                raise ModelNotFound(f"model '{name}' has no version {version}")
        served = entry.served
        if served is None:
            detail = f": {entry.reason}" if entry.reason else ""
            raise ModelNotReady(f"model '{name}' is not ready ({entry.state.lower()}){detail}")
        if version not in (None, "") and int(str(version)) != served.model.version:
            raise ModelNotFound(
                f"model '{name}' version {version} is not served; version {served.model.version} is"
            )
        return served

    def index(self) -> list[dict[str, Any]]:
        """The v2 repository index: every model with its state and, if failed, the reason."""
        rows: list[dict[str, Any]] = []
        for name in sorted(self._entries):
            entry = self._entries[name]
            row: dict[str, Any] = {"name": name, "state": entry.state}
            if entry.served is not None:
                row["version"] = str(entry.served.model.version)
                row["state"] = "READY"
            if entry.reason:
                row["reason"] = entry.reason
            rows.append(row)
        return rows

    # -- loading ---------------------------------------------------------------------------

    def _model_names(self) -> list[str]:
        """The model folders this server serves: all of them, or just ``--model``."""
        names = scan_models(self.root)
        if self._only is None:
            return names
        return [self._only] if self._only in names else []

    async def load_all(self) -> None:
        """Scan the repository and load every model (failures are recorded, not raised)."""
        names = self._model_names()
        for name in names:
            self._entries.setdefault(name, ModelEntry(name))
        await asyncio.gather(*(self._sync_quietly(name) for name in names))
        if not names:
            wanted = f"model '{self._only}'" if self._only else "any model"
            log.error(
                "repository holds no servable model",
                extra={"repository": str(self.root), "wanted": wanted},
            )
        self.initial_load_done.set()
        await self._changed()

    async def rescan(self) -> None:
        """One poll: load new versions and models, unload removed ones."""
        names = set(self._model_names())
        for name in names:
            self._entries.setdefault(name, ModelEntry(name))
        gone = [n for n in self._entries if n not in names]
        await asyncio.gather(
            *(self._sync_quietly(n) for n in sorted(names)), *(self.unload(n) for n in gone)
        )

    async def load(self, name: str) -> ServedModel:
        """Explicit (re)load of ``name``: retries failed versions; raises on failure."""
        if not _NAME.match(name) or self._only not in (None, name):
            raise ModelNotFound(f"model '{name}' is not in the repository")
        if not scan_versions(self.root / name):
            raise ModelNotFound(
                f"model '{name}' has no <version>/{MODEL_FILE} under the repository"
            )
        entry = self._entries.setdefault(name, ModelEntry(name))
        entry.failed.clear()
        await self._sync(name)
        if entry.served is None:
            raise ModelLoadError(entry.reason or f"model '{name}' did not load")
        newest = max(entry.versions)
        if entry.served.model.version != newest and newest in entry.failed:
            raise ModelLoadError(entry.reason)
        return entry.served

    async def unload(self, name: str) -> None:
        """Stop serving ``name`` (queued requests finish first) and forget it."""
        entry = self._entries.pop(name, None)
        if entry is None:
            return
        async with entry.lock:
            if entry.served is not None:
                await self._retire(entry.served)
                entry.served = None
        log.info("model unloaded", extra={"model": name})
        await self._changed()

    async def _sync_quietly(self, name: str) -> None:
        with contextlib.suppress(InferenceError):
            await self._sync(name)

    async def _sync(self, name: str) -> None:
        entry = self._entries[name]
        async with entry.lock:
            versions = scan_versions(self.root / name)
            entry.versions = sorted(versions)
            if not versions:
                entry.state, entry.reason = "UNAVAILABLE", f"no <version>/{MODEL_FILE} found"
                return
            version = max(versions)
            folder = versions[version]
            stamp = fingerprint(folder)
            served = entry.served
            if (
                served is not None
                and served.model.version == version
                and served.fingerprint == stamp
            ):
                return
            if entry.failed.get(version) == stamp:
                return
            try:
                new = await self._bring_up(name, version, folder, stamp)
            except ModelLoadError as exc:
                entry.failed[version] = stamp
                entry.reason = exc.message
                entry.state = "READY" if entry.served is not None else "UNAVAILABLE"
                self._metrics.load_failures.labels(model=name).inc()
                log.error(
                    "model failed to load",
                    extra={"model": name, "version": version, "error": exc.message},
                )
                raise
            old, entry.served = entry.served, new
            entry.state, entry.reason = "READY", ""
            entry.failed.pop(version, None)
            if old is not None:
                await self._retire(old)
        await self._changed()

    async def _bring_up(self, name: str, version: int, folder: Path, stamp: str) -> ServedModel:
        started = time.perf_counter()
        # Session creation parses and optimises the graph; keep it off the event loop and
        # off the inference threads so serving models are not held up by it.
        model = await asyncio.to_thread(OnnxModel.load, name, version, folder, self._settings)
        loop = asyncio.get_running_loop()
        try:
            # Warm-up on the inference threads: the first run allocates arenas and (on GPU)
            # builds kernels, which should not land on a caller's latency.
            await loop.run_in_executor(
                self._executor, model.run, model.warmup_feeds(), model.output_names()
            )
        except Exception as exc:
            raise ModelLoadError(
                f"model '{name}' version {version}: warm-up inference failed: {exc}"
            ) from exc
        cfg = self._config
        batcher = Batcher(
            model,
            self._executor,
            self._metrics,
            max_batch_size=cfg.max_batch_size,
            max_delay_s=cfg.max_queue_delay_ms / 1000.0,
            max_queue_size=cfg.max_queue,
        )
        batcher.start()
        self._metrics.model_ready.labels(model=name, version=str(version)).set(1)
        log.info(
            "model ready",
            extra={
                "model": name,
                "version": version,
                "batching": batcher.max_batch_size > 1,
                "text_generation": model.generates_text,
                "embeddings": model.embedding is not None,
                "load_seconds": round(time.perf_counter() - started, 3),
            },
        )
        return ServedModel(model=model, batcher=batcher, fingerprint=stamp)

    async def _retire(self, served: ServedModel) -> None:
        model = served.model
        self._metrics.model_ready.labels(model=model.name, version=str(model.version)).set(0)
        if not await served.wait_released(self._config.drain_timeout_s):
            log.warning(
                "retiring a version with generations still running",
                extra={"model": model.name, "version": model.version},
            )
        await served.batcher.close()

    # -- polling and shutdown --------------------------------------------------------------

    def start_polling(self, interval_s: float) -> None:
        """Rescan every ``interval_s`` seconds in the background (0 = never)."""
        if interval_s > 0 and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll(interval_s))

    async def _poll(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.rescan()
            except Exception:
                # A poll must never kill the server; the next one tries again.
                log.exception("repository poll failed")

    async def close(self) -> None:
        """Stop polling and drain every batcher."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await asyncio.gather(*(self._retire(s) for s in self.served()))
