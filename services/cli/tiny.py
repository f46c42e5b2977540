"""``magsrl make-tiny-model``: builds the offline tiny Qwen-VL model into a folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

# Cheap: families needs neither torch nor transformers.
from magsrl.zoom.families import FAMILIES

DEFAULT_FAMILY = "qwen2_5_vl"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "make-tiny-model",
        help="build a tiny random-weight Qwen-VL model, offline",
        description="Build a tiny, random-weight model of the real Qwen2.5-VL or Qwen3-VL "
        "architecture with its tokenizer, processor and chat template, offline and "
        "deterministically. It loads like a real checkpoint; tests and demos use it.",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="output folder")
    parser.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        default=DEFAULT_FAMILY,
        help="model family (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from magsrl.models.tiny import build_tiny_model

    console = Console(stderr=True)
    if args.dir.exists() and not args.dir.is_dir():
        # iterdir() on a file raised NotADirectoryError with a traceback.
        console.print(f"[red]{args.dir} is a file; give a folder (new or empty)")
        return 2
    if args.dir.exists() and any(args.dir.iterdir()):
        console.print(f"[red]{args.dir} exists and is not empty; choose a new folder")
        return 2
    start = time.perf_counter()
    try:
        path = build_tiny_model(args.dir, family=args.family, seed=args.seed)
    except OSError as exc:  # e.g. a parent that is a file, or no permission
        console.print(f"[red]cannot write {args.dir}: {exc.strerror or exc}")
        return 2
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    console.print(
        f"[green]ok[/] tiny {args.family} model in {path} "
        f"({size / 1e6:.2f} MB, {time.perf_counter() - start:.1f}s)"
    )
    return 0
