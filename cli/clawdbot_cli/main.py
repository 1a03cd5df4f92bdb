"""The ``clawdbot`` command: CRDs, the seed importer, offline validation, model compression,
and the cluster's state (status, rollback, routing decisions)."""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from clawdbot_api import crdgen, docgen, seed, structural
from clawdbot_api.manifests import ManifestError, parse_manifests
from clawdbot_cli import cluster, gateway
from clawdbot_runtime import compress

Command = Callable[[argparse.Namespace], int]


def _crds(args: argparse.Namespace) -> int:
    out = Path(args.output_dir)
    if args.check:
        problems = crdgen.drift(out)
        for problem in problems:
            print(f"{problem}; run 'make crds' and commit the result", file=sys.stderr)
        for info in crdgen.KINDS:
            for problem in structural.check_crd(crdgen.build_crd(info)):
                problems.append(problem)
                print(f"{info.name}: {problem}", file=sys.stderr)
        return 1 if problems else 0
    for path in crdgen.generate(out):
        print(f"wrote {path}")
    return 0


def _import_config(args: argparse.Namespace) -> int:
    opts = seed.ImportOptions(
        namespace=args.namespace,
        policy_name=args.policy_name,
        models_pvc=args.models_pvc,
        cloud_base_url=args.cloud_base_url,
        cloud_model=args.cloud_model,
        cloud_secret=args.cloud_secret,
    )
    try:
        config = seed.load(Path(args.file))
        sys.stdout.write(seed.to_yaml(seed.translate(config, opts)))
    except seed.SeedConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _validate(args: argparse.Namespace) -> int:
    failed = False
    for name in args.files:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text()
            objects = parse_manifests(text, "<stdin>" if name == "-" else name)
        except OSError as exc:
            print(f"error: {name}: cannot read: {exc.strerror}", file=sys.stderr)
            failed = True
            continue
        except ManifestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
            continue
        for obj in objects:
            meta = getattr(obj, "metadata", None)
            print(f"{name}: {type(obj).__name__} {getattr(meta, 'name', '')}: valid")
    return 1 if failed else 0


def _compress(args: argparse.Namespace) -> int:
    source, target = Path(args.source), Path(args.target)
    try:
        if args.repository:
            results = compress.compress_repository(
                source,
                target,
                args.precision,
                model=args.model,
                version=args.version,
                keep_quantized=args.keep_quantized,
                eval_inputs=args.eval_inputs,
            )
            print("\n".join(line for r in results for line in r.lines()))
            return 0
        if args.model is not None or args.version is not None:
            print("error: --model and --version need --repository", file=sys.stderr)
            return 2
        stored = compress.stored_precision(source) if args.keep_quantized else None
        if stored is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            print(f"{source}: already quantized ({stored}); copied as stored")
            return 0
        report = compress.compress(source, target, args.precision, eval_inputs=args.eval_inputs)
    except compress.CompressionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report.lines()))
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from clawdbot_sidecar.accounting import audit  # noqa: PLC0415

    try:
        key = Path(args.hmac_key_file).read_bytes().strip() if args.hmac_key_file else None
        result = audit.verify(args.files, hmac_key=key, expected_last_hash=args.expect_last_hash)
    except OSError as exc:
        print(f"error: {exc.filename}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    if not result.ok:
        print(f"error: {result}", file=sys.stderr)
        return 1
    print(f"{' '.join(args.files)}: {result}")
    return 0


def _docs(args: argparse.Namespace) -> int:
    out = Path(args.output_dir)
    if args.check:
        stale = docgen.drift(out)
        for name in stale:
            print(f"{name}: differs from the API types; run make docs", file=sys.stderr)
        return 1 if stale else 0
    for written in docgen.generate(out):
        print(f"wrote {written}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="clawdbot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("crds", help="generate the CRDs from the API types")
    p.add_argument("--output-dir", default="crds", help="where to write (default: crds)")
    p.add_argument("--check", action="store_true", help="fail if the files drift from the types")
    p.set_defaults(func=_crds)

    p = sub.add_parser(
        "import-config",
        help="print the ModelDeployments and RoutingPolicy equivalent to a clawdbot-config.yaml",
    )
    p.add_argument("file", help="the seed clawdbot-config.yaml")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--policy-name", default="default", help="RoutingPolicy name")
    p.add_argument("--models-pvc", help="serve the seed's model paths from this PVC")
    p.add_argument("--cloud-base-url", default=seed.ImportOptions.cloud_base_url)
    p.add_argument("--cloud-model", default=seed.ImportOptions.cloud_model)
    p.add_argument(
        "--cloud-secret", default=seed.ImportOptions.cloud_secret, help="Secret with the API key"
    )
    p.set_defaults(func=_import_config)

    p = sub.add_parser("validate", help="validate clawdbot.io manifests offline")
    p.add_argument("files", nargs="+", help="YAML files ('-' for stdin)")
    p.set_defaults(func=_validate)

    p = sub.add_parser("compress", help="quantize an ONNX model and report size and output change")
    p.add_argument("source", help="the ONNX model to compress (with --repository: a repository)")
    p.add_argument("target", help="where to write the compressed model (or repository)")
    p.add_argument("--precision", choices=compress.PRECISIONS, required=True)
    p.add_argument(
        "--eval-inputs", type=int, default=64, help="held-out inputs to compare outputs on"
    )
    p.add_argument(
        "--repository",
        action="store_true",
        help="SOURCE and TARGET are model repositories (<model>/<version>/model.onnx); the "
        "version folder's other files are copied along",
    )
    p.add_argument("--model", help="with --repository: only this model (default: every one)")
    p.add_argument(
        "--version", type=int, help="with --repository: this version (default: the highest)"
    )
    p.add_argument(
        "--keep-quantized",
        action="store_true",
        help="copy a model that is already int8/int4 as it is instead of quantizing it again",
    )
    p.set_defaults(func=_compress)

    p = sub.add_parser("audit", help="work with the sidecar's audit log")
    audit_sub = p.add_subparsers(dest="audit_command", required=True)
    p = audit_sub.add_parser("verify", help="check the hash chain; exit 1 naming the broken line")
    p.add_argument("files", nargs="+", help="log files, rotated ones first, oldest first")
    p.add_argument("--hmac-key-file", help="file holding the policy's audit HMAC key")
    p.add_argument("--expect-last-hash", help="last hash recorded elsewhere (catches a cut tail)")
    p.set_defaults(func=_audit_verify)

    p = sub.add_parser("docs", help="generate the API reference (docs/reference) from the types")
    p.add_argument("--output-dir", default="docs/reference", help="where to write")
    p.add_argument("--check", action="store_true", help="fail if the files drift from the types")
    p.set_defaults(func=_docs)

    gateway.add_parser(sub)
    # `clawdbot dicom` is the sidecar's code: the runtime image ships this CLI for
    # `clawdbot compress` without the sidecar, and offers no `dicom` there.
    try:
        dicom = importlib.import_module("clawdbot_cli.dicom")
    except ImportError:
        pass
    else:
        dicom.add_parser(sub)
    cluster.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clawdbot`` console script."""
    args = build_parser().parse_args(argv)
    func: Command = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
