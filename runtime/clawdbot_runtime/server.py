"""Assembly of one model server: providers, model manager, data plane and both fronts.

The order of start-up is what Kubernetes probes expect: the ports open first (liveness
answers at once, readiness says false), then every model loads and runs a warm-up
inference, and only then does readiness turn true. Shutdown is the reverse: readiness
turns false, in-flight requests finish, then the ports close.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import onnxruntime as ort
from aiohttp import web

from clawdbot_runtime import openai_api, rest
from clawdbot_runtime.config import RuntimeConfig
from clawdbot_runtime.dataplane import DataPlane
from clawdbot_runtime.grpc_server import GrpcFront
from clawdbot_runtime.metrics import RuntimeMetrics
from clawdbot_runtime.model import SessionSettings
from clawdbot_runtime.providers import select_providers
from clawdbot_runtime.repository import ModelManager

log = logging.getLogger(__name__)


class RuntimeServer:
    """A running model server; ``start`` then ``shutdown``, both on the same event loop."""

    def __init__(self, config: RuntimeConfig) -> None:
        """Check the execution providers (ProviderUnavailable if missing); bind nothing yet."""
        self.config = config
        self.providers = select_providers(
            config.accelerator,
            ort.get_available_providers(),
            allow_cpu_fallback=config.allow_cpu_fallback,
            device_id=config.device_id,
        )
        if self.providers.fell_back_to_cpu:
            log.warning(
                "accelerator provider missing; serving on CPU as --allow-cpu-fallback asks",
                extra={"accelerator": config.accelerator},
            )
        self.metrics = RuntimeMetrics()
        self._executor = ThreadPoolExecutor(
            max_workers=config.inference_threads, thread_name_prefix="onnxruntime"
        )
        settings = SessionSettings(providers=self.providers, cpu_threads=config.cpu_threads)
        self.manager = ModelManager(config, settings, self._executor, self.metrics)
        self.dataplane = DataPlane(self.manager, self.metrics)
        app = rest.build_app(self.dataplane, max_request_bytes=config.max_request_bytes)
        openai_api.add_routes(app, self.dataplane)
        # By the time the runner shuts down the drain is over; its own wait only bounds
        # handlers still running after the drain timeout.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.drain_timeout_s)
        self._grpc: GrpcFront | None = None
        self.http_port = config.http_port
        self.grpc_port = config.grpc_port

    async def start(self) -> None:
        """Open both ports, load and warm up the models, then start repository polling."""
        cfg = self.config
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.http_port)
        await site.start()
        self.http_port = int(self._runner.addresses[0][1])
        self._grpc = GrpcFront(
            self.dataplane, cfg.host, cfg.grpc_port, max_message_bytes=cfg.max_request_bytes
        )
        self.grpc_port = self._grpc.port
        await self._grpc.start()
        self.manager.add_listener(self._grpc.sync_health)
        log.info(
            "listening",
            extra={
                "http_port": self.http_port,
                "grpc_port": self.grpc_port,
                "providers": self.providers.names,
                "cpu_threads": cfg.cpu_threads,
            },
        )
        await self.manager.load_all()
        self.manager.start_polling(cfg.repository_poll_interval_s)
        log.info("ready" if self.dataplane.ready() else "not ready: no model could be served")

    async def shutdown(self) -> None:
        """Graceful drain: unready first, let in-flight requests finish, then close."""
        if self.dataplane.draining:
            return
        self.dataplane.begin_drain()
        if self._grpc is not None:
            await self._grpc.sync_health()
        log.info("draining", extra={"in_flight": self.dataplane.in_flight})
        if not await self.dataplane.wait_idle(self.config.drain_timeout_s):
            log.warning(
                "drain timeout: closing with requests in flight",
                extra={"in_flight": self.dataplane.in_flight},
            )
        if self._grpc is not None:
            await self._grpc.stop(grace_s=1.0)
        await self._runner.cleanup()
        await self.manager.close()
        self._executor.shutdown(wait=True)
        log.info("stopped")
