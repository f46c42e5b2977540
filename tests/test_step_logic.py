"""A training step's logic against real Redis and a scripted worker (the learner and the
magnifier are stand-ins; the queue, the collector, grouping, refill and failure scoring are
real): steps always finish, failures are scored and counted, zero-variance groups are
refilled, and a step with no gradient makes no update."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import torch

from magsrl.data.sample import Sample
from magsrl.proto.rollout import RolloutJob, RolloutResult, Segment
from magsrl.trainer.config import TrainerSettings
from magsrl.trainer.queue import RolloutConsumer, RolloutQueue
from magsrl.trainer.run_config import RunConfig
from magsrl.trainer.run_loop import Hooks, RunLoop, advantages_by_group
from magsrl.trainer.schedule import Schedule

Outcome = Callable[[RolloutJob], float | None]  # reward (1 right, 0 wrong); None: hang


class StubLearner:
    """Records what the step trains on; the model side is tested in test_learner.py."""

    def __init__(self) -> None:
        self.processor = SimpleNamespace(pixel_bounds=lambda: (None, None))
        self.eos_id = 0
        self.calls: list[tuple[list[RolloutResult], torch.Tensor]] = []

    def step(self, results: list[RolloutResult], advantages: torch.Tensor) -> dict[str, float]:
        self.calls.append((list(results), advantages.clone()))
        return {"loss": 0.0, "step": float(len(self.calls))}


class StubMagnifier:
    async def upload(self, data: bytes) -> Any:
        return SimpleNamespace(image_id=f"img-{len(data)}")

    async def close(self) -> None:
        return None


def result_for(job: RolloutJob, reward: float) -> RolloutResult:
    fields = ("job_id", "run_id", "step", "sample_index", "group_index", "version")
    return RolloutResult(
        **job.model_dump(include=set(fields)),
        policy_model=job.policy_model,
        worker="scripted",
        segments=[Segment(ids=[1, 2], mask=0), Segment(ids=[3], mask=1, logprobs=[-1.0])],
        images=[],
        reward=reward,
        components={"accuracy": reward, "format": 1.0},
        answer="",
        correct=reward == 1.0,
        zooms=0,
        zoom_errors=0,
        rounds=1,
        completion_tokens=1,
        elapsed_ms=1.0,
    )


async def scripted_worker(url: str, loop: RunLoop, outcome: Outcome, stop: asyncio.Event) -> None:
    consumer = RolloutConsumer.from_url(url, loop.queue_config, name="scripted")
    async with consumer:
        await consumer.ensure_group()
        while not stop.is_set():
            for delivery in await consumer.take(count=16, block_ms=50):
                job = RolloutJob.model_validate(delivery.payload)
                reward = outcome(job)
                if reward is not None:  # None: the job hangs (a poison job), never completes
                    await consumer.complete(delivery, result_for(job, reward))
            await asyncio.sleep(0.02)


def make_loop(tmp_path: Path, redis_url: str, **grpo: Any) -> tuple[RunLoop, Schedule]:
    images = []
    for i in range(12):
        path = tmp_path / f"s{i}.png"
        path.write_bytes(b"x" * (i + 1))
        images.append(path)
    samples = [
        Sample(id=f"s{i}", image=str(p), question="q?", answer="a") for i, p in enumerate(images)
    ]
    config = RunConfig.model_validate(
        {
            "name": "steps",
            "model": "tiny",
            "dataset": "unused",
            "steps": 3,
            "grpo": {"group_size": 2, "prompts_per_step": 2, "micro_batch_size": 2, **grpo},
            "rollout": {
                "job_timeout_s": 0.5,
                "max_deliveries": 1,
                "queue_maxlen": 100,
                "max_lag": 64,
            },
        }
    )
    warnings: list[str] = []
    hooks = Hooks(
        on_step=lambda *_: None,
        on_warning=lambda _step, message: warnings.append(message),
        on_version=lambda *_: None,
        on_checkpoint=lambda *_: None,
        cancelled=asyncio.Event(),
    )
    settings = TrainerSettings(redis_url=redis_url, step_timeout_s=120.0, tensorboard=False)  # type: ignore[call-arg]
    loop = RunLoop("steps", config, tmp_path, settings, hooks, httpx.AsyncClient())
    loop.learner = StubLearner()
    loop.magnifier = StubMagnifier()  # type: ignore[assignment]
    loop.warnings = warnings  # type: ignore[attr-defined]
    return loop, Schedule(config, samples)


async def run_step(
    loop: RunLoop, schedule: Schedule, redis_url: str, outcome: Outcome
) -> dict[str, float]:
    stop = asyncio.Event()
    async with RolloutQueue.from_url(redis_url, loop.queue_config) as queue:
        await queue.ensure_group()
        worker = asyncio.create_task(scripted_worker(redis_url, loop, outcome, stop))
        try:
            return await loop._step(queue, schedule, 0, 0)
        finally:
            stop.set()
            await worker


def test_a_dead_lettered_job_is_a_scored_failure_not_a_wait(tmp_path: Path, redis_url: str) -> None:
    """Pins the step waiting out step_timeout_s (1,800 s by default) for a job the queue gave
    up on: the dead letter becomes a failed result within a second or two, it is counted,
    and it scores 0 in its group (so its right sibling still gets a positive advantage)."""
    loop, schedule = make_loop(tmp_path, redis_url)
    first = schedule.batch(0).samples[0].id

    def outcome(job: RolloutJob) -> float | None:
        if job.sample.id == first and job.group_index == 0:
            return None  # hangs until the janitor dead-letters it
        return 1.0 if job.group_index == 1 else 0.0

    started = time.monotonic()
    metrics = asyncio.run(run_step(loop, schedule, redis_url, outcome))
    assert time.monotonic() - started < 60
    assert metrics["failed"] == 1.0 and metrics["failed_rate"] == 0.25
    assert metrics["updated"] == 1.0
    (trained, advantages), *_ = loop.learner.calls
    assert all(r.error is None for r in trained) and len(trained) == 3
    by_key = {
        (r.sample_index, r.group_index): float(a) for r, a in zip(trained, advantages, strict=True)
    }
    assert by_key[(0, 1)] > 0  # beat its dead-lettered sibling
    assert any("dead-lettered" in w for w in loop.warnings)  # type: ignore[attr-defined]


def test_zero_variance_groups_are_refilled(tmp_path: Path, redis_url: str) -> None:
    """Pins DAPO's dynamic sampling missing: the step's own prompts are all solved (no
    variance), so new prompts are drawn until two groups teach something."""
    loop, schedule = make_loop(tmp_path, redis_url, max_refills=3)
    first = {s.id for s in schedule.batch(0).samples}

    def outcome(job: RolloutJob) -> float:
        if job.sample.id in first:
            return 1.0  # all right: nothing to learn
        return float(job.group_index == 0)

    metrics = asyncio.run(run_step(loop, schedule, redis_url, outcome))
    assert metrics["refilled_prompts"] == 2.0 and metrics["groups_varied"] == 2.0
    (trained, advantages), *_ = loop.learner.calls
    assert {r.sample_index for r in trained} == {2, 3}  # the refill's, after the step's 0, 1
    assert len(trained) == 4 and float(advantages.abs().min()) > 0


def test_a_step_without_variance_makes_no_update(tmp_path: Path, redis_url: str) -> None:
    """Pins the end-to-end run's 4 of 16 steps that made no update yet published a version:
    with nothing to learn (and no refills allowed) the learner is not called."""
    loop, schedule = make_loop(tmp_path, redis_url, max_refills=0)
    metrics = asyncio.run(run_step(loop, schedule, redis_url, lambda job: 1.0))
    assert metrics["updated"] == 0.0 and not loop.learner.calls
    assert metrics["groups_varied"] == 0.0 and metrics["reward_mean"] == 1.0


def test_failed_rollouts_count_as_zero_in_their_group() -> None:
    """Pins failed rollouts dropped from the group (their siblings then compared among
    themselves only): a failure scores 0 but brings no tokens to the learner."""
    ok = [
        RolloutResult.model_validate(
            {**_base(g), "reward": 1.0, "components": {"accuracy": 1.0}, "correct": True}
        )
        for g in range(2)
    ]
    failed = RolloutResult.model_validate({**_base(2), "reward": 0.0, "error": "context overflow"})
    grouped = advantages_by_group([*ok, failed], True, True, {"accuracy": 1.0})
    assert len(grouped.kept) == 2 and grouped.varied == 1
    assert all(float(a) > 0 for a in grouped.advantages)
    alone = advantages_by_group(ok, True, True, {"accuracy": 1.0})
    assert alone.kept == [] and alone.dropped == 1


def _base(g: int) -> dict[str, Any]:
    return {
        "job_id": f"r:0:0:{g}",
        "run_id": "r",
        "step": 0,
        "sample_index": 0,
        "group_index": g,
        "version": 0,
        "policy_model": None,
        "worker": "w",
        "segments": [],
        "images": [],
        "reward": 0.0,
        "components": {},
        "answer": "",
        "correct": False,
        "zooms": 0,
        "zoom_errors": 0,
        "rounds": 1,
        "completion_tokens": 0,
        "elapsed_ms": 0.0,
    }


def test_rollout_metrics_per_round_and_by_zoom() -> None:
    """Pins the instruments: accuracy after a zoom vs without, per-round length and zoom
    count over the episodes that reached the round, truncation and failure rates."""
    from magsrl.trainer.step_metrics import rollout_metrics

    zoomed = RolloutResult.model_validate(
        {
            **_base(0),
            "reward": 1.0,
            "correct": True,
            "zooms": 2,
            "rounds": 2,
            "completion_tokens": 30,
            "round_tokens": [20, 10],
            "round_zooms": [2, 0],
            "box_areas": [0.1, 0.3],
        }
    )
    direct = RolloutResult.model_validate(
        {**_base(1), "completion_tokens": 50, "round_tokens": [50], "round_zooms": [0]}
    )
    cut = direct.model_copy(update={"group_index": 2, "truncated": True})
    failed = RolloutResult.model_validate({**_base(3), "error": "boom"})
    m = rollout_metrics([zoomed, direct, cut, failed])
    assert m["accuracy_zoomed"] == 1.0 and m["accuracy_direct"] == 0.0
    assert m["round1_tokens"] == pytest.approx(40.0) and m["round2_tokens"] == 10.0
    assert m["round1_zooms"] == pytest.approx(2 / 3) and m["round2_reached"] == pytest.approx(1 / 3)
    assert m["box_area_mean"] == pytest.approx(0.2) and m["response_length_max"] == 50.0
    assert m["truncation_rate"] == pytest.approx(1 / 3) and m["failed_rate"] == 0.25
    assert m["reward_mean"] == 0.25  # the failure scores 0


def test_validation_scores_the_held_out_set_with_and_without_zoom(
    tmp_path: Path, redis_url: str
) -> None:
    """Pins validation that trains on its own samples, or reports one arm for both: the
    held-out samples are the dataset's last N, never in the schedule, and each arm is its
    own set of greedy rollouts."""
    loop, schedule = make_loop(tmp_path, redis_url)
    loop.config = loop.config.model_copy(
        update={
            "validation": loop.config.validation.model_copy(update={"every": 1, "max_samples": 3})
        }
    )
    samples = schedule.samples
    train, held = loop._split_validation(samples)
    assert [s.id for s in held] == ["s9", "s10", "s11"] and len(train) == 9
    loop.validation_samples = held

    async def validate() -> dict[str, float]:
        stop = asyncio.Event()
        outcome: Outcome = lambda job: 1.0 if job.zoom == "auto" else 0.0  # noqa: E731
        async with RolloutQueue.from_url(redis_url, loop.queue_config) as queue:
            await queue.ensure_group()
            worker = asyncio.create_task(scripted_worker(redis_url, loop, outcome, stop))
            try:
                return await loop._validate(queue, 4, 0)
            finally:
                stop.set()
                await worker

    metrics = asyncio.run(validate())
    assert metrics["val_accuracy_zoom"] == 1.0 and metrics["val_accuracy_nozoom"] == 0.0
