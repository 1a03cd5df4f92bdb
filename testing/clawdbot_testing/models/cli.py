"""``clawdbot-demo-model``: write one of the project's tiny models into a model repository."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from clawdbot_testing.models.tinyembed import DEMO_EMBED_NAME, build_tiny_embed
from clawdbot_testing.models.tinygpt import DEMO_GPT_NAME, build_tiny_gpt
from clawdbot_testing.models.tinylm import DEMO_MODEL_NAME, build_tiny_lm

BUILDERS = {
    "char": (build_tiny_lm, DEMO_MODEL_NAME),
    "gpt": (build_tiny_gpt, DEMO_GPT_NAME),
    "embed": (build_tiny_embed, DEMO_EMBED_NAME),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clawdbot-demo-model", description=__doc__)
    parser.add_argument("repository", help="model repository folder (created if missing)")
    parser.add_argument(
        "--kind",
        choices=sorted(BUILDERS),
        default="char",
        help=(
            "char: the character-level chat model (generation.json); gpt: a GPT-style "
            "decoder with a KV cache laid out like an Optimum export; embed: a BERT-style "
            "text encoder laid out like a sentence-transformers export (default char)"
        ),
    )
    parser.add_argument(
        "--name",
        help=(
            f"model name (default {DEMO_MODEL_NAME} for char, {DEMO_GPT_NAME} for gpt, "
            f"{DEMO_EMBED_NAME} for embed)"
        ),
    )
    parser.add_argument("--version", type=int, default=1, help="version folder (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clawdbot-demo-model`` console script."""
    args = build_parser().parse_args(argv)
    build, default_name = BUILDERS[args.kind]
    folder = build(Path(args.repository), name=args.name or default_name, version=args.version)
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
