"""The ``magsrl`` command line. Each subcommand lives in its own module and imports its heavy
dependencies lazily, so ``magsrl serve magnifier`` never imports transformers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from magsrl import __version__
from magsrl.cli import answer, curriculum, data, runs, serve, tiny, train, up, weights
from magsrl.cli import eval as eval_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magsrl", description="A magnifying glass for multimodal LLMs."
    )
    parser.add_argument("--version", action="version", version=f"magsrl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (up, serve, answer, eval_cmd, train, runs, curriculum, data, weights, tiny):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args) or 0)
