"""``magsrl data``: dataset tools. ``magsrl data synth`` writes the synthetic needle set
(``magsrl.data.synth``) as images plus a generic ``data.jsonl``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# What --kinds takes when it is not given: every kind the generator knows.
_ALL_KINDS = "colour,count,text,position"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "data",
        help="dataset tools (the synthetic needle set)",
        description="Dataset tools.",
    )
    data_sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_sub.add_parser(
        "synth",
        help="generate the synthetic needle-in-a-haystack set",
        description="Large cluttered scenes with small targets of known difficulty, and a "
        "question about each (colour, count, text, relative position). Writes OUT/images/, "
        "OUT/data.jsonl and OUT/synth_config.json; the same seed gives the same bytes.",
    )
    synth.add_argument("--n", type=int, default=200, help="number of samples (default 200)")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0, help="seed of the whole set (default 0)")
    synth.add_argument("--width", type=int, default=2048, help="canvas width (default 2048)")
    synth.add_argument("--height", type=int, default=1536, help="canvas height (default 1536)")
    synth.add_argument(
        "--kinds",
        default=_ALL_KINDS,
        help=f"comma-separated question kinds, assigned round-robin (default {_ALL_KINDS})",
    )
    synth.add_argument(
        "--difficulty",
        default="0:1",
        help="LO:HI to stratify difficulties over [LO, HI], or one value to fix it (default 0:1)",
    )
    synth.add_argument(
        "--format",
        dest="image_format",
        choices=("auto", "png", "jpeg"),
        default="auto",
        help="image format; auto writes JPEG where the answer survives it (colour, count, "
        "position: about a third of PNG's size) and PNG for text (default auto)",
    )
    synth.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality (default 90)")
    synth.add_argument(
        "--mc-fraction",
        type=float,
        default=0.5,
        help="share of multiple-choice questions (default 0.5)",
    )
    synth.set_defaults(func=run_synth)


def _difficulty(text: str) -> tuple[float, float]:
    """``"0.2:0.8"`` -> (0.2, 0.8); ``"0.5"`` -> (0.5, 0.5)."""
    parts = text.split(":")
    if len(parts) > 2:
        raise ValueError(f"--difficulty {text!r}: expected LO:HI or one value")
    try:
        lo, hi = float(parts[0]), float(parts[-1])
    except ValueError:
        raise ValueError(f"--difficulty {text!r}: expected numbers, like 0.2:0.8") from None
    return lo, hi


def run_synth(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from magsrl.data.synth import SynthConfig, generate

    console = Console(stderr=True)
    try:
        config = SynthConfig(
            width=args.width,
            height=args.height,
            kinds=args.kinds,
            difficulty=_difficulty(args.difficulty),
            image_format=args.image_format,
            jpeg_quality=args.jpeg_quality,
            seed=args.seed,
            mc_fraction=args.mc_fraction,
        )
    except (ValidationError, ValueError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else None
        lines = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors or []]
        console.print(f"[red]bad option:[/] {'; '.join(lines) or exc}")
        return 2
    if args.n < 1:
        console.print(f"[red]bad option:[/] --n must be at least 1, got {args.n}")
        return 2

    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("synth scenes", total=args.n)
        path = generate(
            args.n, args.out, config, progress=lambda done: progress.update(task, completed=done)
        )
    console.print(f"wrote {args.n} samples to {path} ({images_size(path.parent)})", soft_wrap=True)
    return 0


def images_size(out: Path) -> str:
    """The images' size on disk by format: 200 PNG scenes were 504 MB, written silently."""
    sizes: dict[str, list[int]] = {}
    for image in (out / "images").iterdir():
        sizes.setdefault(image.suffix.lstrip(".").upper(), []).append(image.stat().st_size)
    total = sum(sum(v) for v in sizes.values())
    parts = ", ".join(f"{len(v)} {k} {sum(v) / 1e6:.1f} MB" for k, v in sorted(sizes.items()))
    return f"images: {total / 1e6:.1f} MB; {parts}"
