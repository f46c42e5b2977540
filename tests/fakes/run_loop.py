"""The real ``RunLoop`` and the real ``RolloutWorker`` side by side in one event loop, on a
real Redis, against the scripted policy and magnifier of ``tests.fakes.episode``: how the
in-process run-loop tests and the one-step-off benchmark run a whole run without torch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from magsrl.clients.policy import PolicyClient
from magsrl.trainer.config import WorkerSettings
from magsrl.trainer.run_loop import Hooks, RunLoop
from magsrl.trainer.worker import RolloutWorker
from tests.fakes.episode import FakeMagnifier, FakePolicy


def quiet_hooks(on_step: Callable[[int, dict[str, float]], Any]) -> Hooks:
    """Hooks that report finished steps to ``on_step`` and ignore everything else."""
    return Hooks(
        on_step=on_step,
        on_warning=lambda step, text: None,
        on_version=lambda version, name: None,
        on_checkpoint=lambda step, path: None,
        cancelled=asyncio.Event(),
    )


async def run_beside_worker(
    loop: RunLoop,
    policy: FakePolicy,
    magnifier: FakeMagnifier,
    redis_url: str,
    *,
    concurrency: int = 1,
    poll_s: float = 0.02,
) -> dict[str, Any]:
    """``loop.run()`` with one worker taking its jobs; the worker, and the loop's HTTP client,
    are closed afterwards. The loop talks to the magnifier fake; both talk to ``policy``.

    ``concurrency`` 1 (one rollout at a time) keeps scripted replies in job order: they
    alternate in the order the policy is asked, and concurrent episodes (whose image work
    runs in threads) could answer a group twice alike and leave its step without variance."""
    loop.magnifier = magnifier  # type: ignore[assignment]
    loop.metrics.plot = lambda out: []  # type: ignore[method-assign]  # matplotlib: seconds
    worker = RolloutWorker(
        WorkerSettings(
            redis_url=redis_url,
            worker_poll_s=poll_s,
            worker_name="w",
            worker_concurrency=concurrency,
        ),  # type: ignore[call-arg]
        policy_client=PolicyClient(loop.settings.policy_url, client=policy.client()),
        magnifier=magnifier,  # type: ignore[arg-type]
    )
    await worker.connect()
    assert worker.policy is not None
    await worker.policy.http.aclose()
    worker.policy.http = policy.client()
    taking = asyncio.create_task(worker._take_loop())
    try:
        return await loop.run()
    finally:
        worker.stopping.set()
        await taking
        await worker.close()
        await loop.http.aclose()
