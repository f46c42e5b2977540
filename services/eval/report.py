"""Turns the records of an eval into its report: accuracy per arm and per category with
bootstrap intervals, paired McNemar comparisons, zoom and box statistics, latency; then
writes it as ``report.json``, ``report.md`` and the ``accuracy.png`` plot."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path

from magsrl.eval import stats
from magsrl.eval.config import EvalConfig
from magsrl.eval.results import turn_limit
from magsrl.proto.eval import (
    ACCURACY_PLOT,
    REPORT_JSON,
    REPORT_MD,
    Accuracy,
    ArmSpec,
    ArmStats,
    BoxStats,
    Estimate,
    EvalRecord,
    EvalReport,
    LatencyStats,
    McNemar,
    PairComparison,
)

UNCATEGORISED = "(none)"


def arm_turn_limit(
    config: EvalConfig, arm: ArmSpec, described: dict[str, str]
) -> tuple[int | None, str]:
    """The turn limit ``arm``'s episodes ran under (``turn_limit``; one round with zoom
    off, as the loop runs it), ``described`` being the backend's ``describe()``."""
    if arm.zoom == "off":
        return 1, "zoom off: one round"
    return turn_limit(config, described.get("protocol"), described.get("model"))


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def accuracy(outcomes: Sequence[bool], confidence: float, resamples: int, seed: int) -> Accuracy:
    if not outcomes:
        return Accuracy(n=0, correct=0, accuracy=Estimate(value=0.0, low=0.0, high=0.0))
    value, low, high = stats.bootstrap_mean_ci(
        [float(x) for x in outcomes], confidence=confidence, resamples=resamples, seed=seed
    )
    return Accuracy(
        n=len(outcomes),
        correct=sum(outcomes),
        accuracy=Estimate(value=round(value, 4), low=round(low, 4), high=round(high, 4)),
    )


def arm_stats(
    arm: ArmSpec, records: list[EvalRecord], confidence: float, resamples: int, seed: int
) -> ArmStats:
    fractions = [f for r in records for f in r.box_fractions]
    latencies = [r.latency_ms for r in records if r.error is None]
    timed = [r.timing_ms for r in records if r.error is None and r.timing_ms]
    n = len(records) or 1  # the rates of an arm with no records are 0, not undefined

    def timing(name: str) -> float | None:
        return _round(stats.mean([t.get(name, 0.0) for t in timed]), 1)

    return ArmStats(
        arm=arm,
        accuracy=accuracy([r.correct for r in records], confidence, resamples, seed),
        errors=sum(1 for r in records if r.error is not None),
        zoom_rate=round(sum(1 for r in records if r.zooms > 0) / n, 4),
        mean_zooms=round(sum(r.zooms for r in records) / n, 4),
        zoom_errors=sum(r.zoom_errors for r in records),
        boxes=BoxStats(
            n=len(fractions),
            mean_fraction=_round(stats.mean(fractions)),
            median_fraction=_round(stats.percentile(fractions, 50)),
            p10_fraction=_round(stats.percentile(fractions, 10)),
            p90_fraction=_round(stats.percentile(fractions, 90)),
        ),
        latency=LatencyStats(
            p50_ms=_round(stats.percentile(latencies, 50), 1),
            p95_ms=_round(stats.percentile(latencies, 95), 1),
            mean_ms=_round(stats.mean(latencies), 1),
            model_ms=timing("model"),
            magnifier_ms=timing("magnifier"),
            queue_ms=timing("queue") if any("queue" in t for t in timed) else None,
            overhead_ms=timing("overhead"),
        ),
    )


def compare(
    a: str,
    b: str,
    by_sample: dict[str, dict[str, EvalRecord]],
    confidence: float,
    resamples: int,
    seed: int,
) -> PairComparison:
    """Arms a and b on the samples both answered (a sample failed under one arm still
    counts: as wrong, as in the accuracy)."""
    pairs = [
        (arms[a].correct, arms[b].correct) for arms in by_sample.values() if a in arms and b in arms
    ]
    both = sum(1 for x, y in pairs if x and y)
    a_only = sum(1 for x, y in pairs if x and not y)
    b_only = sum(1 for x, y in pairs if y and not x)
    if pairs:
        diff, low, high = stats.paired_difference_ci(
            [x for x, _ in pairs],
            [y for _, y in pairs],
            confidence=confidence,
            resamples=resamples,
            seed=seed,
        )
    else:
        diff = low = high = 0.0
    statistic, p_value, method = stats.mcnemar(a_only, b_only)
    return PairComparison(
        a=a,
        b=b,
        n=len(pairs),
        both_right=both,
        a_only=a_only,
        b_only=b_only,
        both_wrong=len(pairs) - both - a_only - b_only,
        difference=Estimate(value=round(diff, 4), low=round(low, 4), high=round(high, 4)),
        mcnemar=McNemar(
            statistic=round(statistic, 4),
            p_value=round(p_value, 6),
            method=method,  # type: ignore[arg-type]
        ),
    )


def build_report(
    records: Iterable[EvalRecord],
    arms: list[ArmSpec],
    sample_ids: Sequence[str],
    *,
    dataset: str,
    dataset_kind: str,
    seed: int,
    limit: int | None,
    backend: dict[str, str],
    confidence: float,
    resamples: int,
    elapsed_s: float,
    total_elapsed_s: float | None = None,
    runs: int = 1,
    turn_limits: dict[str, tuple[int | None, str]] | None = None,
) -> EvalReport:
    """The report over ``arms`` and ``sample_ids`` (records of other samples or arms in the
    file are left out, so the report describes exactly the experiment asked for).
    ``turn_limits``: arm name -> (the limit its episodes ran under, where it came from),
    from ``arm_turn_limit``."""
    wanted = set(sample_ids)
    names = [arm.name for arm in arms]
    by_sample: dict[str, dict[str, EvalRecord]] = {}
    for record in records:
        if record.sample_id in wanted and record.arm in names:
            by_sample.setdefault(record.sample_id, {})[record.arm] = record
    by_arm = {name: [r[name] for r in by_sample.values() if name in r] for name in names}
    limits = turn_limits or {}
    categories: dict[str, dict[str, Accuracy]] = {}
    for name in names:
        groups: dict[str, list[bool]] = {}
        for record in by_arm[name]:
            groups.setdefault(record.category or UNCATEGORISED, []).append(record.correct)
        for category, outcomes in sorted(groups.items()):
            categories.setdefault(category, {})[name] = accuracy(
                outcomes, confidence, resamples, seed
            )
    return EvalReport(
        dataset=dataset,
        dataset_kind=dataset_kind,
        seed=seed,
        limit=limit,
        samples=len(by_sample),
        backend=backend,
        confidence=confidence,
        bootstrap_resamples=resamples,
        arms=[
            arm_stats(arm, by_arm[arm.name], confidence, resamples, seed).model_copy(
                update=dict(zip(("max_rounds", "max_rounds_from"), limits[arm.name], strict=True))
                if arm.name in limits
                else {}
            )
            for arm in arms
        ],
        categories=dict(sorted(categories.items())),
        comparisons=[
            compare(a, b, by_sample, confidence, resamples, seed)
            for a, b in itertools.combinations(names, 2)
        ],
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        elapsed_s=round(elapsed_s, 1),
        total_elapsed_s=None if total_elapsed_s is None else round(total_elapsed_s, 1),
        runs=runs,
    )


# ---- writing --------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _estimate(e: Estimate, signed: bool = False) -> str:
    sign = "+" if signed and e.value > 0 else ""
    return f"{sign}{100 * e.value:.1f} [{100 * e.low:.1f}, {100 * e.high:.1f}]"


def _upscale(arm: ArmSpec) -> str:
    """No zoom, no crop to enlarge: the no-zoom row showed `sr`, as if it had used it."""
    return "-" if arm.zoom == "off" else arm.upscale


def _time_line(report: EvalReport) -> str:
    """A resumed report used to state only the resumed part's time."""
    if report.runs <= 1:
        return f"the run took {report.elapsed_s:.0f} s"
    total = (
        "earlier runs' time unknown"
        if report.total_elapsed_s is None
        else f"{report.total_elapsed_s:.0f} s in all"
    )
    return f"{report.runs} runs (resumed): {total}, the last {report.elapsed_s:.0f} s"


def to_markdown(report: EvalReport) -> str:
    level = f"{100 * report.confidence:.0f}%"
    lines = [
        f"# Eval: {report.dataset}",
        "",
        f"- dataset: `{report.dataset}` ({report.dataset_kind}), {report.samples} samples"
        + (f" drawn with seed {report.seed} (limit {report.limit})" if report.limit else ""),
        f"- seed: {report.seed} (sample draw and multiple-choice option order)",
        "- backend: " + ", ".join(f"{k} `{v}`" for k, v in report.backend.items()),
        f"- intervals: {level} percentile bootstrap, {report.bootstrap_resamples} resamples",
        f"- created {report.created}; {_time_line(report)}",
        "",
        "## Accuracy per arm",
        "",
        f"| arm | zoom | upscale | accuracy % [{level} CI] | n | errors | zoom rate % "
        "| zooms/sample | box area % (median) | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report.arms:
        lines.append(
            f"| {s.arm.name} | {s.arm.zoom} | {_upscale(s.arm)} | {_estimate(s.accuracy.accuracy)} "
            f"| {s.accuracy.n} | {s.errors} | {_pct(s.zoom_rate)} | {s.mean_zooms:.2f} "
            f"| {_pct(s.boxes.median_fraction)} | {_ms(s.latency.p50_ms)} "
            f"| {_ms(s.latency.p95_ms)} |"
        )
    limits = [
        f"{s.arm.name} {s.max_rounds if s.max_rounds is not None else '?'} ({s.max_rounds_from})"
        for s in report.arms
        if s.max_rounds_from
    ]
    if limits:
        lines += ["", "Turn limit: " + "; ".join(limits) + "."]
    lines += [
        "",
        "Errors count as wrong. Box area is each served zoom box's share of the image.",
        "",
        "## Paired comparisons (McNemar)",
        "",
        f"| a vs b | pairs | a right, b wrong | b right, a wrong | a - b, points [{level} CI] "
        "| p-value | test |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in report.comparisons:
        lines.append(
            f"| {c.a} vs {c.b} | {c.n} | {c.a_only} | {c.b_only} "
            f"| {_estimate(c.difference, signed=True)} | {c.mcnemar.p_value:.4g} "
            f"| {c.mcnemar.method} |"
        )
    names = [s.arm.name for s in report.arms]
    lines += [
        "",
        "## Accuracy per category (%)",
        "",
        "| category | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for category, per_arm in report.categories.items():
        cells = [
            f"{100 * per_arm[n].accuracy.value:.1f} (n={per_arm[n].n})" if n in per_arm else "-"
            for n in names
        ]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Time per sample (mean ms, as the policy splits it)",
        "",
        "| arm | model | magnifier | queue | overhead |",
        "|---|---|---|---|---|",
    ]
    for s in report.arms:
        t = s.latency
        lines.append(
            f"| {s.arm.name} | {_ms(t.model_ms)} | {_ms(t.magnifier_ms)} | {_ms(t.queue_ms)} "
            f"| {_ms(t.overhead_ms)} |"
        )
    return "\n".join(lines) + "\n"


def percent_bars(report: EvalReport) -> tuple[list[str], list[float], list[list[float]]]:
    """Arm names, accuracies and error bars (below, above) in percent: the axis was 0-1
    while the bars' labels said %."""
    names = [s.arm.name for s in report.arms]
    values = [100 * s.accuracy.accuracy.value for s in report.arms]
    errors = [
        [v - 100 * s.accuracy.accuracy.low for v, s in zip(values, report.arms, strict=True)],
        [100 * s.accuracy.accuracy.high - v for v, s in zip(values, report.arms, strict=True)],
    ]
    return names, values, errors


def plot_accuracy(report: EvalReport, path: Path) -> None:
    """Accuracy per arm with its interval as error bars."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here, and none needed
    import matplotlib.pyplot as plt

    names, values, errors = percent_bars(report)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2.5, 4.0), dpi=120)
    bars = ax.bar(names, values, yerr=errors, capsize=6, color="#4c72b0", ecolor="#222")
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value:.1f}%",
            (bar.get_x() + bar.get_width() / 2, value),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=9,
        )
    ax.set_ylim(0, 105)
    ax.set_ylabel(f"accuracy, % ({100 * report.confidence:.0f}% bootstrap CI)")
    ax.set_title(f"{Path(report.dataset).name}: {report.samples} samples, seed {report.seed}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: EvalReport, out: Path) -> list[Path]:
    paths = [out / REPORT_JSON, out / REPORT_MD, out / ACCURACY_PLOT]
    paths[0].write_text(report.model_dump_json(indent=2) + "\n")
    paths[1].write_text(to_markdown(report))
    plot_accuracy(report, paths[2])
    return paths
