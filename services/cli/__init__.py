"""The ``magsrl`` command line. Each subcommand lives in its own module and imports its heavy
dependencies lazily, so ``magsrl serve magnifier`` never imports transformers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from magsrl import __version__
from magsrl.cli import answer, curriculum, data, nano, runs, serve, tiny, train, up, weights
from magsrl.cli import eval as eval_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magsrl", description="A magnifying glass for multimodal LLMs."
    )
    parser.add_argument("--version", action="version", version=f"magsrl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (up, serve, answer, eval_cmd, train, runs, curriculum, data, weights, tiny, nano):
        module.register(sub)
    _plain_text(parser)
    return parser


def _plain_text(parser: argparse.ArgumentParser) -> None:
    """Descriptions are the modules' docstrings, written in reStructuredText for the docs:
    a terminal showed their ``double backticks`` literally, so they become quotes here."""
    if parser.description:
        parser.description = parser.description.replace("``", "'")
    for action in parser._actions:
        if action.help:
            action.help = action.help.replace("``", "'")
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _plain_text(sub)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args) or 0)
