"""Eval benchmark: what the harness costs on top of the policy, and what its statistics cost.

1. Harness overhead: ``run_eval`` (image read, thumbnail, request, scoring, the results
   file) against a real tiny policy and magnifier, at concurrency 1 and 4. Baseline in the
   same run: a bare httpx loop posting the same ``/answer`` bodies at the same concurrency.
2. Bootstrap: the report's multinomial bootstrap of a mean against plain index resampling
   (numpy, the same 10,000 resamples), for 1,000 to 100,000 outcomes.

Run: ``make bench`` or ``.venv/bin/python bench/eval.py [--samples N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from magsrl.cli.supervisor import Supervisor, free_port
from magsrl.common.settings import default_cache_dir
from magsrl.eval.arms import parse_arms
from magsrl.eval.backends import PolicyBackend
from magsrl.eval.config import EvalConfig, EvalSettings
from magsrl.eval.runner import ImageInfo, request_for, run_eval
from magsrl.eval.samples import load_samples
from magsrl.eval.stats import bootstrap_mean_ci

RESULTS = Path(__file__).parent / "results" / "eval.json"
RESAMPLES = 10_000
MAX_TOKENS = 16  # the tiny model writes junk: a fixed, short length keeps runs comparable


async def bare_rate(url: str, bodies: list[dict], concurrency: int) -> float:  # type: ignore[type-arg]
    queue = list(bodies)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                (await client.post("/answer", json=body)).raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(bodies) / (time.perf_counter() - start)


async def harness_rate(config: EvalConfig, settings: EvalSettings, samples: list) -> float:  # type: ignore[type-arg]
    backend = PolicyBackend(config, settings)
    try:
        summary = await run_eval(samples, config, settings, backend, "synthetic")
    finally:
        await backend.close()
    assert summary.failed == 0 and summary.done == len(samples), summary
    return summary.done / summary.elapsed_s


def overhead(samples_n: int, tmp: Path) -> list[dict]:  # type: ignore[type-arg]
    supervisor = Supervisor(tmp / "logs")
    weights = os.environ.get("MAGSRL_WEIGHTS_DIR", str(default_cache_dir() / "weights"))
    magnifier = supervisor.add_magsrl_service(
        "magnifier", free_port(), env={"MAGSRL_WEIGHTS_DIR": weights}
    )
    policy = supervisor.add_magsrl_service(
        "policy",
        free_port(),
        env={"MAGSRL_POLICY_MODEL": "tiny", "MAGSRL_MAGNIFIER_URL": magnifier.url},
    )
    supervisor.start()
    rows = []
    try:
        supervisor.wait_ready(timeout_s=300)
        settings = EvalSettings()
        for concurrency in (1, 4):
            config = EvalConfig(
                dataset="synthetic",
                arms=parse_arms("zoom-sr"),
                limit=samples_n,
                seed=0,
                concurrency=concurrency,
                out=tmp / f"eval-c{concurrency}",
                policy_url=policy.url,
                max_tokens=MAX_TOKENS,
                synthetic_size=(1024, 768),
            )
            samples, _ = load_samples(config, settings.synthetic_n)
            bodies = []
            for sample in samples:
                data = Path(sample.image).read_bytes()
                info = ImageInfo(data, (1024, 768), None)
                request = request_for(sample, config.arms[0], info, config)
                bodies.append(request.model_dump(mode="json", exclude_none=True))
            asyncio.run(bare_rate(policy.url, bodies[:2], 1))  # warm the engine
            bare = asyncio.run(bare_rate(policy.url, bodies, concurrency))
            harness = asyncio.run(harness_rate(config, settings, samples))
            rows.append(
                {
                    "concurrency": concurrency,
                    "samples": samples_n,
                    "bare_httpx_per_s": round(bare, 2),
                    "harness_per_s": round(harness, 2),
                    "harness_vs_bare": round(harness / bare, 3),
                }
            )
            print(rows[-1], flush=True)
    finally:
        supervisor.stop()
    return rows


def naive_bootstrap(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 50_000_000 // (8 * values.size))  # bounded memory per draw
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, values.size, size=(stop - start, values.size))
        means[start:stop] = values[idx].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975], method="inverted_cdf")
    return float(low), float(high)


def bootstrap_rows() -> list[dict]:  # type: ignore[type-arg]
    rows = []
    rng = np.random.default_rng(0)
    for n in (1_000, 10_000, 100_000):
        values = (rng.random(n) < 0.62).astype(float)
        start = time.perf_counter()
        _, low, high = bootstrap_mean_ci(values, confidence=0.95, resamples=RESAMPLES, seed=1)
        fast = time.perf_counter() - start
        start = time.perf_counter()
        ref_low, ref_high = naive_bootstrap(values, RESAMPLES, seed=2)
        slow = time.perf_counter() - start
        rows.append(
            {
                "n": n,
                "multinomial_ms": round(1000 * fast, 2),
                "index_resampling_ms": round(1000 * slow, 1),
                "speedup": round(slow / fast, 1),
                "interval": [round(low, 4), round(high, 4)],
                "index_interval": [round(ref_low, 4), round(ref_high, 4)],
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=24)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="magsrl-bench-eval-"))
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "bootstrap": bootstrap_rows(),
        "overhead": overhead(args.samples, tmp),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
