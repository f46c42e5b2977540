"""``magsrl eval DATASET --arms zoom-sr,zoom-bicubic,zoom-crop,no-zoom --limit N --seed S
--out DIR``: the paper's ablation on any dataset the loaders read (or ``synthetic``).

Writes DIR/results.jsonl (one line per sample and arm, appended as each lands: rerunning
the same command resumes), DIR/report.json, DIR/report.md and DIR/accuracy.png.

Side by side: ``--policy URL1 --policy URL2`` (and ``--protocol P1 --protocol P2``, one per
policy; or one policy with several protocols) runs the same seeded samples through each,
each into DIR/<label>/, and DIR's report compares every policy/arm pair with the same
statistics as the arms (magsrl.eval.side_by_side).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from magsrl.eval.arms import DEFAULT_ARMS, known_arms
from magsrl.proto.vocab import PROTOCOLS


def _size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 2048x1536, got {text!r}")
    return int(width), int(height)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "eval",
        help="run the zoom ablation on a dataset and write a report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dataset", help="a dataset file or folder the loaders read, synthetic, or nano"
    )
    parser.add_argument(
        "--arms",
        default=DEFAULT_ARMS,
        help=f"comma-separated, from: {', '.join(known_arms())} (default: %(default)s)",
    )
    parser.add_argument("--limit", type=int, default=None, help="draw N samples with the seed")
    parser.add_argument(
        "--seed", type=int, default=0, help="sample draw, option order, bootstrap (default 0)"
    )
    parser.add_argument("--out", type=Path, default=None, help="default: ./eval-<dataset name>")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="requests in flight (default: %(default)s)"
    )
    parser.add_argument("--kind", default="auto", help="dataset format (default: detect)")
    parser.add_argument("--split", default=None, help="a split or category, where it has them")
    parser.add_argument("--fresh", action="store_true", help="start over (old results kept aside)")
    target = parser.add_argument_group("what answers (default: the policy service)")
    target.add_argument(
        "--policy",
        action="append",
        default=None,
        help="policy URL (default: MAGSRL_POLICY_URL); repeat it to compare policies",
    )
    target.add_argument(
        "--openai",
        default=None,
        metavar="URL",
        help="an OpenAI-compatible /v1 base URL instead; "
        "the zoom loop then runs here, with the magnifier for crops",
    )
    target.add_argument("--model", default=None, help="policy: an adapter; --openai: the model")
    target.add_argument(
        "--magnifier", default=None, help="with --openai (default: MAGSRL_MAGNIFIER_URL)"
    )
    target.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        action="append",
        default=None,
        help="a zoom protocol (GET /v1/protocols: tags, tools, deepeyes, mini_o3, mgpo, "
        "qwen3_vl_thinking, chain_of_focus) or auto (default: the policy's; with --openai: "
        "tags); once per --policy to compare checkpoints each in its own protocol",
    )
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument(
        "--max-rounds", type=int, default=None, help="default: the protocol's turn limit"
    )
    sampling.add_argument(
        "--temperature", type=float, default=0.0, help="0 is greedy (default: %(default)s)"
    )
    sampling.add_argument(
        "--max-tokens", type=int, default=None, help="per round (default: the policy's)"
    )
    parser.add_argument(
        "--synthetic-size",
        type=_size,
        default=(2048, 1536),
        help="canvas of synthetic scenes, WxH (default: 2048x1536)",
    )
    parser.set_defaults(func=run)


def default_out(dataset: str) -> Path:
    name = Path(dataset).stem if dataset not in ("synthetic", "nano") else dataset
    return Path(f"eval-{name}")


def _config(
    args: argparse.Namespace, settings: Any, policy_url: str, protocol: str | None, out: Path
) -> Any:
    from magsrl.eval.arms import parse_arms
    from magsrl.eval.config import EvalConfig

    return EvalConfig(
        dataset=args.dataset,
        kind=args.kind,
        split=args.split,
        arms=parse_arms(args.arms),
        limit=args.limit,
        seed=args.seed,
        concurrency=args.concurrency,
        out=out,
        backend="openai" if args.openai else "policy",
        policy_url=policy_url,
        openai_url=args.openai,
        openai_api_key=os.environ.get("OPENAI_API_KEY") or None,
        magnifier_url=args.magnifier or settings.magnifier_url,
        api_key=settings.api_key,
        model=args.model,
        **({"protocol": protocol} if protocol else {}),
        **({"max_rounds": args.max_rounds} if args.max_rounds else {}),
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        synthetic_size=args.synthetic_size,
    )


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from rich.console import Console

    from magsrl.common.errors import validation_message
    from magsrl.eval.config import EvalSettings
    from magsrl.eval.results import ResultsConflict, check_manifest
    from magsrl.eval.samples import load_samples

    console = Console()
    settings = EvalSettings()
    urls: list[str] = args.policy or [settings.policy_url]
    protocols: list[str] = args.protocol or []
    out = args.out or default_out(args.dataset)
    if not args.openai and (len(urls) > 1 or len(protocols) > 1):
        return _run_side_by_side(args, settings, urls, protocols, out, console)
    try:
        config = _config(args, settings, urls[-1], protocols[-1] if protocols else None, out)
        config.check()
        check_manifest(config.out, config, fresh=args.fresh)
        samples, kind = load_samples(config, settings.synthetic_n)
    except ValidationError as exc:
        console.print(f"[red]{validation_message(exc.errors())[0]}")
        return 2
    except (ValueError, OSError, ResultsConflict) as exc:
        console.print(f"[red]{exc}")
        return 2
    try:
        return asyncio.run(_evaluate(config, settings, samples, kind, console))
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted; the finished samples are in {config.out}: "
            "run the same command to resume"
        )
        return 130


async def _evaluate(config: Any, settings: Any, samples: list[Any], kind: str, console: Any) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    from magsrl.eval.backends import BackendDown, make_backend
    from magsrl.eval.report import arm_turn_limit, build_report, write_report
    from magsrl.eval.runner import Eta, run_eval
    from magsrl.proto.eval import EvalRecord

    backend = make_backend(config, settings)
    try:
        try:
            described = await backend.describe()
        except BackendDown as exc:
            console.print(f"[red]{exc}")
            return 1
        # Our ETA, not rich's: its 30-second speed window jumped between minutes and hours.
        columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), "{task.fields[eta]}")
        tally: dict[str, list[int]] = {arm.name: [0, 0] for arm in config.arms}
        eta = Eta(0)
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("eval", total=None, eta="")

            def on_start(total: int) -> None:
                nonlocal eta
                eta = Eta(total)
                bar.update(task, total=total)

            def on_record(record: EvalRecord) -> None:
                right, seen = tally[record.arm]
                tally[record.arm] = [right + record.correct, seen + 1]
                running = " ".join(
                    f"{name} {100 * r / s:.0f}%" for name, (r, s) in tally.items() if s
                )
                eta.advance()
                bar.update(task, advance=1, description=running, eta=eta.text())

            summary = await run_eval(samples, config, settings, backend, kind, on_record, on_start)
    finally:
        await backend.close()
    report = build_report(
        summary.records.values(),
        config.arms,
        [s.id for s in samples],
        dataset=config.dataset,
        dataset_kind=kind,
        seed=config.seed,
        limit=config.limit,
        backend=described,
        confidence=settings.confidence,
        resamples=settings.bootstrap_resamples,
        elapsed_s=summary.elapsed_s,
        total_elapsed_s=summary.total_elapsed_s,
        runs=summary.runs,
        turn_limits={a.name: arm_turn_limit(config, a, described) for a in config.arms},
    )
    paths = write_report(report, config.out)
    _print_summary(console, report)
    console.print(
        f"{summary.done} answered now, {summary.skipped} from earlier runs, "
        f"{summary.failed} failed; wrote " + ", ".join(str(p) for p in paths)
    )
    if summary.stopped:
        console.print(
            f"[yellow]stopped early: {summary.stopped}\nthe report covers what finished; "
            "run the same command to resume"
        )
        return 1
    return 0


def _run_side_by_side(
    args: argparse.Namespace,
    settings: Any,
    urls: list[str],
    protocols: list[str],
    out: Path,
    console: Any,
) -> int:
    from pydantic import ValidationError

    from magsrl.common.errors import validation_message
    from magsrl.eval.results import ResultsConflict, check_manifest
    from magsrl.eval.samples import load_samples
    from magsrl.eval.side_by_side import contenders

    if len(urls) == 1:  # one policy, several protocols: the protocol ablation
        urls = urls * len(protocols)
    try:
        runs = []
        for c in contenders(urls, protocols):
            config = _config(args, settings, c.policy_url, c.protocol, out / c.label)
            config.check()
            check_manifest(config.out, config, fresh=args.fresh)
            runs.append((c.label, config))
        # The same seed and dataset draw the same samples for every contender.
        samples, kind = load_samples(runs[0][1], settings.synthetic_n)
    except ValidationError as exc:
        console.print(f"[red]{validation_message(exc.errors())[0]}")
        return 2
    except (ValueError, OSError, ResultsConflict) as exc:
        console.print(f"[red]{exc}")
        return 2
    return asyncio.run(_evaluate_side_by_side(runs, settings, samples, kind, out, console))


async def _evaluate_side_by_side(
    runs: list[tuple[str, Any]],
    settings: Any,
    samples: list[Any],
    kind: str,
    out: Path,
    console: Any,
) -> int:
    from magsrl.eval.backends import BackendDown, make_backend
    from magsrl.eval.report import arm_turn_limit, build_report, write_report
    from magsrl.eval.runner import run_eval
    from magsrl.eval.side_by_side import relabel

    arms: list[Any] = []
    records: list[Any] = []
    limits: dict[str, Any] = {}
    described: dict[str, str] = {}
    elapsed, stopped = 0.0, []
    total: float | None = 0.0  # every run of every contender, resumed ones included
    resumed = 1
    for label, config in runs:
        backend = make_backend(config, settings)
        try:
            try:
                about = await backend.describe()
            except BackendDown as exc:
                console.print(f"[red]{label}: {exc}")
                return 1
            console.print(f"{label}: {config.policy_url}")
            summary = await run_eval(samples, config, settings, backend, kind)
        finally:
            await backend.close()
        named, renamed = relabel(label, config.arms, summary.records.values())
        limits.update(
            {
                n.name: arm_turn_limit(config, a, about)
                for n, a in zip(named, config.arms, strict=True)
            }
        )
        arms += named
        records += renamed
        described.update({f"{label}.{k}": str(v) for k, v in about.items()})
        elapsed += summary.elapsed_s
        total = (
            None
            if total is None or summary.total_elapsed_s is None
            else (total + summary.total_elapsed_s)
        )
        resumed = max(resumed, summary.runs)
        if summary.stopped:
            stopped.append(f"{label}: {summary.stopped}")
    first = runs[0][1]
    report = build_report(
        records,
        arms,
        [s.id for s in samples],
        dataset=first.dataset,
        dataset_kind=kind,
        seed=first.seed,
        limit=first.limit,
        backend=described,
        confidence=settings.confidence,
        resamples=settings.bootstrap_resamples,
        elapsed_s=elapsed,
        total_elapsed_s=total,
        runs=resumed,
        turn_limits=limits,
    )
    paths = write_report(report, out)
    _print_summary(console, report)
    console.print("wrote " + ", ".join(str(p) for p in paths))
    if stopped:
        console.print("[yellow]stopped early: " + "; ".join(stopped))
        return 1
    return 0


def _print_summary(console: Any, report: Any) -> None:
    from rich.table import Table

    table = Table(title=f"{report.samples} samples, seed {report.seed}")
    for column in ("arm", "accuracy", f"{100 * report.confidence:.0f}% CI", "zoom rate", "p50 ms"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for s in report.arms:
        a = s.accuracy.accuracy
        table.add_row(
            s.arm.name,
            f"{100 * a.value:.1f}%",
            f"{100 * a.low:.1f}-{100 * a.high:.1f}",
            f"{100 * s.zoom_rate:.0f}%",
            "-" if s.latency.p50_ms is None else f"{s.latency.p50_ms:.0f}",
        )
    console.print(table)
    for c in report.comparisons:
        console.print(
            f"{c.a} vs {c.b}: {c.a_only} vs {c.b_only} discordant, "
            f"McNemar p = {c.mcnemar.p_value:.3g}"
        )
