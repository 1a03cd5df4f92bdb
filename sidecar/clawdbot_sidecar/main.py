"""``clawdbot-sidecar``: the routing sidecar, standalone or in a pod.

    clawdbot-sidecar serve --config sidecar.yaml [--host 127.0.0.1] [--port 8088]
                           [--grpc-port 8089]
    clawdbot-sidecar serve --seed clawdbot-config.yaml --local-url http://127.0.0.1:8000/v1

The config file holds the RoutingPolicy (or its spec) and the local endpoints; it is
re-read when it changes (a mounted ConfigMap is updated in place). The cloud API key comes
from CLAWDBOT_CLOUD_API_KEY or the file named by CLAWDBOT_CLOUD_API_KEY_FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from clawdbot_sidecar.accounting.metrics import SidecarMetrics
from clawdbot_sidecar.config import ConfigError, SidecarConfig, config_from_seed, load_config
from clawdbot_sidecar.discovery import DiscoveryClient, PodIdentity
from clawdbot_sidecar.fronts.grpc import GrpcFront
from clawdbot_sidecar.fronts.rest import RestFront
from clawdbot_sidecar.plugins import PluginError, load_plugins
from clawdbot_sidecar.redaction.fastscan import fast_tier_path
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.upstream import Upstream

log = logging.getLogger("clawdbot.sidecar")

# How often the config file is checked for changes.
RELOAD_INTERVAL_S = 2.0
# gRPC calls still running after the drain wait get this long before they are cancelled.
GRPC_STOP_GRACE_S = 1.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clawdbot-sidecar", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="route OpenAI requests between local and cloud")
    serve.add_argument("--config", type=Path, help="sidecar config (policy and endpoints)")
    serve.add_argument("--seed", type=Path, help="the seed's clawdbot-config.yaml instead")
    serve.add_argument(
        "--local-url", action="append", default=[], help="with --seed: a local model's /v1 URL"
    )
    serve.add_argument("--cloud-url", help="with --seed: the cloud's OpenAI base URL")
    serve.add_argument("--cloud-model", help="with --seed: the cloud model name")
    serve.add_argument(
        "--local-model",
        help="with --seed: the model name the local server serves (default: the seed's)",
    )
    serve.add_argument("--host", default=os.environ.get("CLAWDBOT_SIDECAR_HOST", "127.0.0.1"))
    serve.add_argument(
        "--port", type=int, default=int(os.environ.get("CLAWDBOT_SIDECAR_PORT", "8088"))
    )
    serve.add_argument(
        "--grpc-port",
        type=int,
        default=int(os.environ.get("CLAWDBOT_SIDECAR_GRPC_PORT", "8089")),
        help="gRPC port (Open Inference Protocol v2 and Generate); 0 disables it",
    )
    serve.add_argument(
        "--probe-port",
        type=int,
        default=int(os.environ.get("CLAWDBOT_SIDECAR_PROBE_PORT", "-1")),
        help="also answer /healthz and /readyz alone on this port, on --probe-host, for the "
        "kubelet's probes when --host is loopback (-1: off; 0: a free port)",
    )
    serve.add_argument(
        "--probe-host",
        default=os.environ.get("CLAWDBOT_SIDECAR_PROBE_HOST", "0.0.0.0"),
        help="address of the probe port (default: every address of the pod)",
    )
    serve.add_argument(
        "--discovery",
        default=os.environ.get("CLAWDBOT_DISCOVERY_ADDRESS"),
        help="host:port of the operator's discovery stream (policy and endpoints from it)",
    )
    serve.add_argument(
        "--discovery-token-file",
        type=Path,
        default=os.environ.get("CLAWDBOT_DISCOVERY_TOKEN_FILE"),
        help="projected service-account token (audience clawdbot) sent to the operator",
    )
    serve.add_argument(
        "--discovery-ca",
        type=Path,
        default=os.environ.get("CLAWDBOT_DISCOVERY_CA_FILE"),
        help="CA certificate of the operator's stream (or its PEM in CLAWDBOT_DISCOVERY_CA); "
        "without either the stream is plaintext",
    )
    serve.add_argument(
        "--audit-hmac-key-file",
        type=Path,
        default=os.environ.get("CLAWDBOT_AUDIT_HMAC_KEY_FILE"),
        help="key of the audit log's hash chain (the policy's audit.hmacKeySecretRef)",
    )
    serve.add_argument(
        "--plugin",
        action="append",
        default=[p for p in os.environ.get("CLAWDBOT_SIDECAR_PLUGINS", "").split(",") if p],
        help="enable an installed plugin (entry point group clawdbot.sidecar.plugins); repeatable",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return p


def _load(args: argparse.Namespace) -> SidecarConfig:
    if args.discovery:
        if args.config is not None or args.seed is not None:
            raise ConfigError("--discovery replaces --config/--seed; pass only one of them")
        # Serve nothing until the first snapshot (readiness waits for it).
        return SidecarConfig()
    if args.seed is not None:
        if args.config is not None:
            raise ConfigError("pass either --config or --seed, not both")
        return config_from_seed(
            args.seed,
            args.local_url,
            cloud_url=args.cloud_url,
            cloud_model=args.cloud_model,
            local_model=args.local_model,
        )
    if args.config is None:
        raise ConfigError("no configuration: pass --config FILE (policy and local endpoints)")
    return load_config(args.config)


def _discovery_ca(path: Path | None) -> bytes | None:
    if path is not None:
        return path.read_bytes()
    pem = os.environ.get("CLAWDBOT_DISCOVERY_CA")
    return pem.encode() if pem else None


async def _watch(core: RoutingCore, path: Path) -> None:
    """Apply the config file again whenever it changes; keep the last good one on errors.

    Any failure (unreadable, invalid, a component that can't be built) is logged and the
    watch goes on, so fixing the file takes effect at the next check.
    """
    last = (await asyncio.to_thread(path.stat)).st_mtime_ns
    while True:
        await asyncio.sleep(RELOAD_INTERVAL_S)
        try:
            mtime = (await asyncio.to_thread(path.stat)).st_mtime_ns
            if mtime == last:
                continue
            last = mtime
            core.apply(await asyncio.to_thread(load_config, path))
            log.info("configuration reloaded from %s", path)
        except (OSError, ConfigError) as exc:
            log.error("keeping the previous configuration: %s", exc)
        except Exception as exc:  # e.g. a redaction setting the engine refuses
            log.error(
                "keeping the previous configuration: %s could not be applied (%s: %s)",
                path,
                type(exc).__name__,
                exc,
            )


async def _start_probes(front: RestFront, args: argparse.Namespace) -> None:
    if args.probe_port >= 0:
        port = await front.start_probes(args.probe_host, args.probe_port)
        log.info("probes (/healthz, /readyz) on %s:%d", args.probe_host, port)


async def serve(args: argparse.Namespace) -> int:
    config = _load(args)
    pod = PodIdentity(os.environ.get("POD_NAMESPACE", ""), os.environ.get("POD_NAME", ""))
    if args.discovery and not (pod.namespace and pod.name):
        raise ConfigError("--discovery needs POD_NAMESPACE and POD_NAME in the environment")
    upstream = Upstream.create(connect_timeout_s=config.limits.local_connect_timeout_s)
    hmac_key = args.audit_hmac_key_file.read_bytes().strip() if args.audit_hmac_key_file else None
    scope = pod.namespace or "standalone"
    metrics = SidecarMetrics()
    try:
        plugins = load_plugins(args.plugin, metrics.registry)
    except PluginError as exc:
        await upstream.close()
        raise ConfigError(str(exc)) from exc
    core = RoutingCore(
        config,
        upstream,
        metrics=metrics,
        audit_hmac_key=hmac_key,
        cache_scope=scope,
        plugins=plugins,
    )
    front = RestFront(core)
    client = None
    if args.discovery:
        client = DiscoveryClient(
            args.discovery,
            pod,
            args.discovery_token_file,
            base=config,
            apply=core.apply,
            pool=core.pool,
            ca_pem=_discovery_ca(args.discovery_ca),
        )
        front.synced = client.synced
    await front.start(args.host, args.port)
    log.info(
        "routing on http://%s:%d/v1 (%d local endpoints, cloud %s)",
        args.host,
        front.port,
        len(config.endpoints),
        "configured" if config.policy.cloud else "off",
    )
    await _start_probes(front, args)
    log.info("redaction fast tier: %s", fast_tier_path())
    grpc_front = GrpcFront(core, args.host, args.grpc_port) if args.grpc_port else None
    if grpc_front is not None:
        await grpc_front.start(front.synced)
        log.info("gRPC on %s:%d", args.host, grpc_front.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch(core, args.config)) if args.config else None
    if client is not None:
        watcher = asyncio.create_task(client.run())
    await stop.wait()

    # Drain: fail readiness so no new traffic is sent, let requests in progress finish.
    front.draining = True
    if grpc_front is not None:
        await grpc_front.drain()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(core.idle.wait(), config.limits.drain_timeout_s)
    if core.in_flight:
        log.warning("stopping with %d requests still in progress", core.in_flight)
    if watcher is not None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if grpc_front is not None:
        await grpc_front.stop(GRPC_STOP_GRACE_S)
    await front.close()
    await core.close()
    await upstream.close()
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # noqa: PLC0415 - optional: not on every platform
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "info").upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        # uvloop (a libuv loop) where installed: measurably less CPU per proxied request.
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(serve(args))
    except ConfigError as exc:
        print(f"clawdbot-sidecar: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
