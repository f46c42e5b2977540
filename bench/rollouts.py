"""Rollout benchmark: rollouts per second of the tiny stack with 1, 2 and 4 rollout workers.

Everything is real: a policy process serving the tiny Qwen2.5-VL on the hf engine
(``MAGSRL_POLICY_MODEL=tiny``), a magnifier process (CPU), an embedded Redis, and rollout
worker processes (``magsrl serve rollout-worker``, started by the same ``Supervisor`` as
``magsrl up --workers N``). They are fed ``--jobs`` real ``RolloutJob``s (one synthetic scene
uploaded once, GRPO groups of 8) through the real queue (``RolloutQueue`` and the run
registry the trainer publishes), and each job's result is a full ``RolloutResult``.

Baseline in the same run: the same episodes run in-process, one after another, through
the same policy and magnifier with the worker's own ``run_job`` (one client, no queue, no
worker process), so the ratio shows what the worker fan-out buys. Episode latency is the
worker's own ``elapsed_ms`` of each result (image fetch, the zoom loop, rewards, encoding).

Run: ``make bench`` or ``.venv/bin/python bench/rollouts.py [--jobs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from magsrl.cli.supervisor import Supervisor, free_port, tail
from magsrl.clients.magnifier import MagnifierClient
from magsrl.common.redis_server import EmbeddedRedis
from magsrl.common.settings import default_cache_dir
from magsrl.data.synth import SynthConfig, generate
from magsrl.models.tiny import resolve_model
from magsrl.proto.rollout import RolloutJob, RolloutResult
from magsrl.proto.sample import Sample
from magsrl.trainer.config import WorkerSettings
from magsrl.trainer.queue import QueueConfig, RolloutQueue
from magsrl.trainer.registry import publish_run, retire_run
from magsrl.trainer.worker import RolloutWorker, run_job

RESULTS = Path(__file__).parent / "results" / "rollouts.json"
WORKER_COUNTS = (1, 2, 4)
GROUP_SIZE = 8
# The tiny model writes junk and rarely stops on its own: a fixed, short length per round
# keeps episodes comparable across runs (as bench/eval.py does).
MAX_TOKENS = 16
SCENE_SIZE = (1024, 768)  # ~0.8 MP, the scale of the 1 MP figures in issue 15
READY_TIMEOUT_S = 300.0
ROUND_TIMEOUT_S = 600.0
CONSUMERS_TIMEOUT_S = 60.0
WARMUP_EPISODES = 2
CONNECTED = "policy serves"  # the worker's log line once it has asked the policy
# Three of the worker's run look-ups (worker_poll_s).
DISCOVERY_S = 3 * WorkerSettings.model_fields["worker_poll_s"].default


@dataclass
class Stack:
    """The long-lived processes; workers are added to ``workers`` round by round."""

    services: Supervisor  # policy + magnifier
    workers: Supervisor
    env: dict[str, str]  # what every worker is started with

    @property
    def policy_url(self) -> str:
        return self.env["MAGSRL_POLICY_URL"]

    @property
    def magnifier_url(self) -> str:
        return self.env["MAGSRL_MAGNIFIER_URL"]

    @property
    def redis_url(self) -> str:
        return self.env["MAGSRL_REDIS_URL"]


def start_stack(tmp: Path, redis_url: str) -> Stack:
    """Policy (tiny, hf engine) and magnifier as `magsrl up` starts them, ready."""
    services = Supervisor(tmp / "logs")
    weights = os.environ.get("MAGSRL_WEIGHTS_DIR", str(default_cache_dir() / "weights"))
    magnifier = services.add_magsrl_service(
        "magnifier", free_port(), env={"MAGSRL_WEIGHTS_DIR": weights}
    )
    policy = services.add_magsrl_service(
        "policy",
        free_port(),
        env={"MAGSRL_POLICY_MODEL": "tiny", "MAGSRL_MAGNIFIER_URL": magnifier.url},
    )
    services.start()
    try:
        services.wait_ready(timeout_s=READY_TIMEOUT_S)
    except Exception:
        services.stop()
        raise
    env = {
        "MAGSRL_REDIS_URL": redis_url,
        "MAGSRL_POLICY_URL": policy.url,
        "MAGSRL_MAGNIFIER_URL": magnifier.url,
    }
    return Stack(services, Supervisor(tmp / "logs"), env)


def scene_sample(tmp: Path) -> Sample:
    """One synthetic scene and its question, with the image path made absolute."""
    width, height = SCENE_SIZE
    data = generate(1, tmp / "synth", SynthConfig(width=width, height=height, image_format="jpeg"))
    row = json.loads(data.read_text().splitlines()[0])
    row["image"] = str((data.parent / row["image"]).resolve())
    return Sample.model_validate(row)


def eos_token_id() -> int:
    """The tiny model's end of turn, as the learner would put it in each job."""
    folder = Path(resolve_model("tiny"))
    return int(json.loads((folder / "generation_config.json").read_text())["eos_token_id"])


def make_jobs(
    run_id: str, sample: Sample, image_id: str, n: int, eos: int, max_tokens: int
) -> list[RolloutJob]:
    """``n`` jobs in GRPO groups of ``GROUP_SIZE`` over one sample, each with its own seed,
    shaped as the trainer's ``_make_jobs`` shapes them (base model, version 0)."""
    return [
        RolloutJob(
            job_id=f"{run_id}:0:{i // GROUP_SIZE}:{i % GROUP_SIZE}",
            run_id=run_id,
            step=0,
            sample_index=i // GROUP_SIZE,
            group_index=i % GROUP_SIZE,
            version=0,
            policy_model=None,
            sample=sample,
            image_id=image_id,
            eos_token_id=eos,
            rewards={"accuracy": 1.0, "format": 0.1},
            max_tokens=max_tokens,
            temperature=1.0,
            seed=i,
        )
        for i in range(n)
    ]


def summary(
    latencies_ms: list[float], elapsed_s: float, results: list[RolloutResult]
) -> dict[str, Any]:
    cuts = statistics.quantiles(latencies_ms, n=20, method="inclusive")  # 5% steps
    return {
        "rollouts_per_s": round(len(latencies_ms) / elapsed_s, 3),
        "latency_p50_ms": round(statistics.median(latencies_ms), 1),
        "latency_p95_ms": round(cuts[18], 1),
        "elapsed_s": round(elapsed_s, 2),
        "failed": sum(1 for r in results if r.error is not None),
        "mean_rounds": round(statistics.fmean(r.rounds for r in results), 2),
        "mean_zooms": round(statistics.fmean(r.zooms for r in results), 2),
    }


async def run_inline(stack: Stack, jobs: list[RolloutJob]) -> list[RolloutResult]:
    """The jobs one after another through ``run_job`` in this process: the worker's code
    with one policy client and one magnifier client, and no queue."""
    worker = RolloutWorker(
        WorkerSettings(  # type: ignore[call-arg]
            policy_url=stack.policy_url,
            magnifier_url=stack.magnifier_url,
            redis_url=stack.redis_url,
            worker_name="inline",
        )
    )
    try:
        await worker.connect()
        assert worker.policy is not None
        return [
            await run_job(job, worker.policy, worker.magnifier, "inline", worker.served)
            for job in jobs
        ]
    finally:
        await worker.close()


async def baseline(stack: Stack, jobs: list[RolloutJob]) -> dict[str, Any]:
    start = time.perf_counter()
    results = await run_inline(stack, jobs)
    elapsed = time.perf_counter() - start
    return summary([r.elapsed_ms for r in results], elapsed, results)


def wait_workers(stack: Stack, n: int) -> None:
    """Until ``n`` workers have connected to the policy (their log says what it serves),
    then ``DISCOVERY_S`` more so that each has looked up the published run: the clock
    starts with every worker polling the run's stream. (An empty stream's XREADGROUP does
    not register a consumer in Redis 6.2, so XINFO CONSUMERS cannot tell.)"""
    deadline = time.monotonic() + CONSUMERS_TIMEOUT_S
    workers = stack.workers.services[:n]
    while not all(CONNECTED in tail(w.log_path, lines=1000) for w in workers):
        stack.workers.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all of {n} workers connected in {CONSUMERS_TIMEOUT_S}s")
        time.sleep(0.2)
    time.sleep(DISCOVERY_S)


async def queued(stack: Stack, jobs: list[RolloutJob], workers: int) -> dict[str, Any]:
    """The jobs through the real queue to ``workers`` worker processes, timed from the first
    enqueue to the last result."""
    run_id = jobs[0].run_id
    config = QueueConfig(run_id=run_id)
    client = aioredis.Redis.from_url(stack.redis_url, decode_responses=True)
    async with RolloutQueue.from_url(stack.redis_url, config) as queue:
        await queue.ensure_group()
        await publish_run(client, config)
        try:
            await asyncio.to_thread(wait_workers, stack, workers)
            start = time.perf_counter()
            for job in jobs:
                await queue.enqueue(job.job_id, job)
            got = await queue.wait_results([j.job_id for j in jobs], timeout_s=ROUND_TIMEOUT_S)
            elapsed = time.perf_counter() - start
        finally:
            await retire_run(client, run_id)
            await client.aclose()
        if got.missing:
            raise RuntimeError(f"{len(got.missing)} of {len(jobs)} results missing ({run_id})")
        await queue.purge()
    results = [RolloutResult.model_validate(raw) for raw in got.results.values()]
    out = summary([r.elapsed_ms for r in results], elapsed, results)
    out["processes"] = len({r.worker for r in results})
    return out


def add_workers(stack: Stack, total: int) -> None:
    """Worker processes up to ``total``, launched as ``magsrl up --workers N`` does."""
    for i in range(len(stack.workers.services), total):
        stack.workers.add_magsrl_service(
            "rollout-worker", 0, env=stack.env, http=False, label=f"rollout-worker-{i + 1}"
        )
    stack.workers.start()
    stack.workers.check_alive()


def measure(jobs_n: int, worker_counts: tuple[int, ...], tmp: Path) -> dict[str, Any]:
    """The whole run: stack up, warm-up, baseline, one round per worker count, stack down."""
    load_start = os.getloadavg()
    with EmbeddedRedis(data_dir=tmp / "redis") as redis:
        stack = start_stack(tmp, redis.url)
        try:
            sample = scene_sample(tmp)
            eos = eos_token_id()

            async def upload() -> str:
                client = MagnifierClient(stack.magnifier_url)
                try:
                    return (await client.upload(Path(sample.image).read_bytes())).image_id
                finally:
                    await client.close()

            image_id = asyncio.run(upload())  # once, as the trainer does per sample
            warm = make_jobs("bench-warmup", sample, image_id, WARMUP_EPISODES, eos, MAX_TOKENS)
            asyncio.run(run_inline(stack, warm))  # the policy's first forwards are slow
            jobs = make_jobs("bench-inline", sample, image_id, jobs_n, eos, MAX_TOKENS)
            base = asyncio.run(baseline(stack, jobs))
            print({"baseline": base}, flush=True)
            rows = []
            for workers in worker_counts:
                add_workers(stack, workers)
                run_jobs = make_jobs(f"bench-w{workers}", sample, image_id, jobs_n, eos, MAX_TOKENS)
                row = {"workers": workers, **asyncio.run(queued(stack, run_jobs, workers))}
                row["vs_inline"] = round(row["rollouts_per_s"] / base["rollouts_per_s"], 2)
                rows.append(row)
                print(row, flush=True)
        except Exception:
            for service in stack.workers.services + stack.services.services:
                print(f"--- {service.name} log ---\n{tail(service.log_path)}", file=sys.stderr)
            raise
        finally:
            stack.workers.stop()
            stack.services.stop()
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "cpu_count": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "jobs": jobs_n,
        "group_size": GROUP_SIZE,
        "max_tokens_per_round": MAX_TOKENS,
        "scene": f"{SCENE_SIZE[0]}x{SCENE_SIZE[1]} synthetic JPEG, uploaded once",
        "worker_concurrency": WorkerSettings.model_fields["worker_concurrency"].default,
        "inline_baseline": base,
        "rows": rows,
    }


def table(results: dict[str, Any]) -> str:
    base = results["inline_baseline"]
    lines = [
        "| setup | rollouts/s | p50 ms | p95 ms | vs in-process |",
        "|---|---|---|---|---|",
        f"| in-process, sequential (baseline) | {base['rollouts_per_s']} | "
        f"{base['latency_p50_ms']} | {base['latency_p95_ms']} | 1.00× |",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['workers']} worker(s) via the queue | {row['rollouts_per_s']} | "
            f"{row['latency_p50_ms']} | {row['latency_p95_ms']} | {row['vs_inline']}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--jobs", type=int, default=24, help="rollouts per setup (default: %(default)s)"
    )
    args = parser.parse_args()
    if args.jobs < 2:
        sys.exit("--jobs must be at least 2 (latency percentiles need two episodes)")
    with tempfile.TemporaryDirectory(prefix="magsrl-bench-rollouts-") as tmp:
        results = measure(args.jobs, WORKER_COUNTS, Path(tmp))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(
        f"machine: {results['machine']}; load average {results['loadavg_start']} at start, "
        f"{results['loadavg_end']} at end; {results['jobs']} rollouts per setup, groups of "
        f"{results['group_size']}, each worker runs {results['worker_concurrency']} at once"
    )
    print(table(results))


if __name__ == "__main__":
    main()
