"""``magsrl nano train``: rebuilds the nano model (a small Qwen2.5-VL that learns to zoom
on the ``nano`` scenes) from a seed, on CPU, with a progress bar. The committed weights
under ``services/models/nano_weights`` were made by this command; see docs/nano.md."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("nano-model")


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "nano",
        help="train the nano zooming model from scratch",
        description="The nano model: a small Qwen2.5-VL trained here, on CPU, to find a "
        "framed label, zoom into it and read its digit.",
    )
    nano_sub = parser.add_subparsers(dest="nano_command", required=True, metavar="ACTION")
    train = nano_sub.add_parser(
        "train",
        help="train the nano model from a seed (10-20 minutes on one shared core)",
        description="Supervised stages on scripted two-round episodes rendered by the real "
        "zoom loop: the vision tower on crops, read the crop, then locate and read, then "
        "anneal. Writes the model folder and the curve (CSV and PNG).",
    )
    train.add_argument(
        "--seed", type=int, default=0, help="seed of scenes and weights (default: 0)"
    )
    train.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="model folder to write (default: %(default)s)"
    )
    train.add_argument(
        "--curves",
        type=Path,
        default=None,
        help="folder for curve.csv and curve.png (default: OUT/curves)",
    )
    train.add_argument(
        "--steps-scale",
        type=float,
        default=1.0,
        help="multiply every stage's step count, e.g. 0.1 for a smoke run (default: 1.0)",
    )
    train.set_defaults(func=run_train)
    data = nano_sub.add_parser(
        "data",
        help="write nano scenes as a JSONL dataset (for examples/train-nano.yaml)",
        description="Nano scenes from their own seed split (never the eval's or the "
        "supervised training's), as data.jsonl with PNG images.",
    )
    data.add_argument("--n", type=int, default=64, help="scenes (default: %(default)s)")
    data.add_argument("--seed", type=int, default=0, help="scene seed (default: %(default)s)")
    data.add_argument(
        "--out",
        type=Path,
        default=Path("examples/data/nano-rl"),
        help="folder to write (default: %(default)s)",
    )
    data.set_defaults(func=run_data)
    table = nano_sub.add_parser(
        "table",
        help="print docs/nano.md's table from a `magsrl eval nano` folder",
        description="Per arm: accuracy with its interval, zoom rate, the share of first "
        "zoom boxes that contain the framed label, that are its grid cell, their mean IoU "
        "with the cell, and McNemar's p against no-zoom.",
    )
    table.add_argument("eval_dir", type=Path, metavar="EVAL_DIR", help="the eval's --out folder")
    table.set_defaults(func=run_table)


def run_train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from magsrl.nano.plot import plot_curve
    from magsrl.nano.train import Recipe, train_nano

    console = Console(stderr=True)
    if args.out.exists() and not args.out.is_dir():
        console.print(f"[red]{args.out} is a file; give a folder")
        return 2
    base = Recipe(seed=args.seed)
    stages = [replace(s, steps=max(1, round(s.steps * args.steps_scale))) for s in base.stages]
    recipe = Recipe(seed=args.seed, stages=stages)
    curves = args.curves or args.out.with_name(args.out.name + "-curves")
    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            key = "data" if phase == "data" else "train"
            if key not in tasks:
                tasks[key] = bar.add_task(phase, total=total)
            bar.update(tasks[key], completed=done, description=phase)

        info = train_nano(args.out, recipe, curves, progress, log=bar.console.print)
    plot_curve(curves / "curve.csv", curves / "curve.png")
    scores = info["held_out_teacher_forced"]
    console.print(
        f"[green]ok[/] nano model in {args.out}: held-out cell {scores['cell']:.2f}, "
        f"crop {scores['crop']:.2f}, no-zoom {scores['direct']:.2f} "
        f"({info['train_seconds'] / 60:.1f} min); curve in {curves}"
    )
    return 0


def run_table(args: argparse.Namespace) -> int:
    import json

    from magsrl.eval.nano_set import box_figures

    report_path = args.eval_dir / "report.json"
    if not report_path.is_file():
        print(f"{report_path} is missing: run `magsrl eval nano --out {args.eval_dir}` first")
        return 2
    report = json.loads(report_path.read_text())
    boxes = box_figures(args.eval_dir)
    p_vs_none = {}
    for c in report["comparisons"]:
        # p with the discordant pairs (right only with zoom / right only without).
        if c["b"] == "no-zoom":
            p_vs_none[c["a"]] = (c["mcnemar"]["p_value"], c["a_only"], c["b_only"])
        elif c["a"] == "no-zoom":
            p_vs_none[c["b"]] = (c["mcnemar"]["p_value"], c["b_only"], c["a_only"])
    level = round(100 * report["confidence"])
    print(
        f"| arm | accuracy % [{level}% CI] | zoom rate % | crop contains label % "
        "| box = cell % | mean IoU with cell | mean IoU with label | McNemar p vs no-zoom |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for arm in report["arms"]:
        name = arm["arm"]["name"]
        acc = arm["accuracy"]["accuracy"]
        b = boxes.get(name, {})
        p = p_vs_none.get(name)
        print(
            f"| {name} | {100 * acc['value']:.0f} [{100 * acc['low']:.0f}, {100 * acc['high']:.0f}]"
            f" | {100 * arm['zoom_rate']:.0f} | {100 * b.get('crop_contains_label', 0):.0f}"
            f" | {100 * b.get('box_is_cell', 0):.0f} | {b.get('mean_iou_cell', 0):.2f}"
            f" | {b.get('mean_iou_label', 0):.2f}"
            f" | {'' if p is None else _p(*p)} |"
        )
    print(f"\n{report['samples']} samples, seed {report['seed']}")
    return 0


def _p(p: float, zoom_only: int, direct_only: int) -> str:
    # The report rounds p to 0 when it underflows its digits; with k discordant pairs all
    # one way p is about 2 * 0.5^k (exact) or smaller (chi-square), so print a safe bound.
    value = f"{p:.2g}" if p > 0 else f"< 1e-{min(15, int(0.30103 * (zoom_only + direct_only)))}"
    return f"{value} ({zoom_only} vs {direct_only})"


def run_data(args: argparse.Namespace) -> int:
    from magsrl.eval.nano_set import RL_SPLIT, write_nano_set

    if args.n < 1:
        print("--n must be at least 1")
        return 2
    path = write_nano_set(args.out, args.n, args.seed, RL_SPLIT)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.n} nano scenes to {path} ({size / 1e6:.1f} MB)")
    return 0
