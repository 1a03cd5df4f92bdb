"""``clawdbot gateway -c clawdbot-config.yaml``: the routing sidecar on one box.

The seed's original deployment: no Kubernetes, one config file. The config's routing rules
become the policy (as ``clawdbot import-config`` translates them), its model is served by
the local model server at ``--local-url`` (an ONNX runtime or vLLM started separately), and
apps point their OpenAI SDK at ``http://HOST:PORT/v1``.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("gateway", help="run the router on one box from a clawdbot-config.yaml")
    p.add_argument("-c", "--config", required=True, help="the seed's clawdbot-config.yaml")
    p.add_argument(
        "--local-url",
        action="append",
        default=[],
        help="OpenAI base URL of a local model server (repeatable; default "
        "http://127.0.0.1:8000/v1, what `clawdbot-runtime serve` listens on)",
    )
    p.add_argument(
        "--cloud-url", help="OpenAI-compatible cloud base URL (key: CLAWDBOT_CLOUD_API_KEY)"
    )
    p.add_argument("--cloud-model", help="cloud model name")
    p.add_argument(
        "--local-model", help="the model name the local server serves (default: the config's)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8088)
    p.add_argument("--grpc-port", type=int, default=8089, help="0 disables the gRPC front")
    p.add_argument("--plugin", action="append", default=[], help="enable an installed plugin")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: the runtime image ships the CLI without the sidecar's dependencies.
    from clawdbot_sidecar import main as sidecar_main  # noqa: PLC0415

    argv = ["serve", "--seed", args.config, "--host", args.host, "--port", str(args.port),
            "--grpc-port", str(args.grpc_port)]  # fmt: skip
    for url in args.local_url or ["http://127.0.0.1:8000/v1"]:
        argv += ["--local-url", url]
    if args.cloud_url:
        argv += ["--cloud-url", args.cloud_url]
    if args.cloud_model:
        argv += ["--cloud-model", args.cloud_model]
    if args.local_model:
        argv += ["--local-model", args.local_model]
    for plugin in args.plugin:
        argv += ["--plugin", plugin]
    return sidecar_main.main(argv)
