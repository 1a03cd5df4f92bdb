"""The ``clawdbot-runtime`` command: ``serve`` a model repository.

The operator writes the ``serve`` command line into model pods, so its flags are a
contract; every flag can also come from a ``CLAWDBOT_RUNTIME_<FIELD>`` environment
variable (the flag wins).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from clawdbot_runtime.config import RuntimeConfig
from clawdbot_runtime.errors import ProviderUnavailable
from clawdbot_runtime.logs import configure_logging
from clawdbot_runtime.server import RuntimeServer

log = logging.getLogger("clawdbot_runtime")

# Exit code for a configuration the server cannot run with (bad flag value, missing
# execution provider): distinct from a crash, and not worth a restart loop's retries.
EXIT_CONFIG = 2


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve the models of a repository over REST and gRPC")
    # Defaults are None so that environment variables and RuntimeConfig's defaults apply.
    p.add_argument("--model-repository", required=True, help="<model>/<version>/model.onnx")
    p.add_argument("--model", help="serve only this model of the repository")
    p.add_argument("--host", help="address to bind (default 0.0.0.0)")
    p.add_argument("--http-port", type=int, help="REST port (default 8000; 0 = any free)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0 = any free)")
    p.add_argument("--accelerator", choices=["cpu", "nvidia", "amd"], help="default cpu")
    p.add_argument(
        "--allow-cpu-fallback",
        action="store_true",
        default=None,
        help="serve on CPU when the accelerator's execution provider is missing",
    )
    p.add_argument("--cpu-threads", type=int, help="onnxruntime intra-op threads (0 = all)")
    p.add_argument(
        "--max-batch-size", type=int, help="rows per merged run (default 8); 1 = no batching"
    )
    p.add_argument(
        "--max-queue-delay-ms", type=float, help="how long a batch waits to fill (default 0)"
    )
    p.add_argument(
        "--max-queue", type=int, help="waiting requests per model before 429 (default 256)"
    )
    p.add_argument(
        "--repository-poll-interval-s",
        type=float,
        help="seconds between scans for new versions (default 5; 0 = never)",
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING... (default INFO)")
    p.add_argument("--log-format", choices=["json", "text"], help="default json")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the command line (one subcommand, ``serve``)."""
    parser = argparse.ArgumentParser(prog="clawdbot-runtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    return parser


async def serve(config: RuntimeConfig) -> None:
    """Run the server until SIGTERM or SIGINT, then drain and return."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = RuntimeServer(config)
    await server.start()
    await stop.wait()
    log.info("signal received; shutting down")
    await server.shutdown()


def _serve(args: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    try:
        config = RuntimeConfig.load(values, environ=os.environ)
    except ValidationError as exc:
        for error in exc.errors():
            flag = "--" + ".".join(str(part) for part in error["loc"]).replace("_", "-")
            print(f"error: {flag}: {error['msg']}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_level, config.log_format)
    try:
        asyncio.run(serve(config))
    except ProviderUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:  # a port already taken, an address not on this host
        print(f"error: cannot listen on {config.host}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clawdbot-runtime`` console script."""
    args = build_parser().parse_args(argv)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
