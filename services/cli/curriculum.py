"""``magsrl curriculum DATASET --judge heuristic --select 40``: scores a dataset through the
judge service and writes a curriculum file (samples with scores and levels), optionally a
stratified selection with a chosen mix of levels."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

METHODS = ("heuristic", "mllm", "pass_rate", "combined")


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "curriculum",
        help="score a dataset with the judge into a curriculum file",
        description=__doc__,
    )
    parser.add_argument("dataset", type=Path, help="a dataset file or directory")
    parser.add_argument("--kind", default="auto", help="the dataset format (default: detect)")
    parser.add_argument(
        "--split", default=None, help="a split or category, where the format has them"
    )
    parser.add_argument("--limit", type=int, default=None, help="score only the first N samples")
    parser.add_argument(
        "--judge",
        choices=METHODS,
        default="heuristic",
        help="the judge method (default: %(default)s)",
    )
    parser.add_argument("--select", type=int, default=None, help="keep N samples, stratified")
    parser.add_argument(
        "--mix",
        default="easy=1,medium=1,hard=1",
        help="level weights for --select (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="of --select (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="default: DATASET.curriculum.jsonl")
    parser.add_argument(
        "--judge-url",
        default=os.environ.get("MAGSRL_JUDGE_URL", "http://127.0.0.1:8002"),
        help="the judge service (default: MAGSRL_JUDGE_URL or %(default)s)",
    )
    parser.add_argument("--policy-model", default=None, help="pass_rate: the adapter to measure")
    parser.add_argument("--no-cache", action="store_true", help="score afresh")
    parser.set_defaults(func=run)


def default_out(dataset: Path) -> Path:
    """data/vsr.jsonl -> data/vsr.curriculum.jsonl; a directory dataset gets one beside it."""
    stem = dataset.stem if dataset.is_file() else dataset.resolve().name
    return dataset.resolve().parent / f"{stem}.curriculum.jsonl"


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from rich.table import Table

    from magsrl.clients.judge import JudgeClient, JudgeError, JudgeUnavailable
    from magsrl.data.curriculum import level_counts, parse_mix, select_stratified, write_curriculum
    from magsrl.data.judging import judge_samples
    from magsrl.data.loaders import load_dataset

    console = Console()
    try:
        mix = parse_mix(args.mix)
        samples = load_dataset(args.dataset, args.kind, split=args.split, limit=args.limit)
    except (ValueError, OSError) as exc:
        console.print(f"[red]{exc}")
        return 2
    if not samples:
        console.print(f"[red]{args.dataset} holds no samples")
        return 2

    async def score() -> Any:
        key = os.environ.get("MAGSRL_API_KEY")
        columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task(f"judging ({args.judge})", total=len(samples))
            async with JudgeClient(args.judge_url, api_key=key) as client:
                return await judge_samples(
                    samples,
                    client,
                    args.judge,
                    cache=not args.no_cache,
                    policy_model=args.policy_model,
                    progress=lambda k: bar.advance(task, k),
                )

    try:
        judged = asyncio.run(score())
    except (JudgeError, JudgeUnavailable) as exc:
        console.print(f"[red]{exc}")
        return 1
    for sample_id, why in judged.failures[:10]:
        console.print(f"[yellow]skipped {sample_id}: {why}")
    if len(judged.failures) > 10:
        console.print(f"[yellow]... and {len(judged.failures) - 10} more skipped")
    if not judged.entries:
        console.print("[red]no sample could be scored")
        return 1
    chosen = select_stratified(judged.entries, args.select, mix, args.seed)
    out = args.out or default_out(args.dataset)
    write_curriculum(out, chosen)

    table = Table(title=f"curriculum: {len(chosen)} of {len(judged.entries)} scored samples")
    table.add_column("level")
    table.add_column("scored", justify="right")
    table.add_column("selected", justify="right")
    everything, picked = level_counts(judged.entries), level_counts(chosen)
    for level in everything:
        table.add_row(level, str(everything[level]), str(picked[level]))
    console.print(table)
    console.print(
        f"{judged.cached} from the judge's cache, {len(judged.failures)} skipped; wrote {out}"
    )
    return 0
