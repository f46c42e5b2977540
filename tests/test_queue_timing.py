"""Queue wait reported as its own time (issue 17): a request that waited in the hf engine's
batch queue behind another call used to show that wait as the answer's "overhead"
(`model 821 + magnifier 0 + overhead 3384` while an eval ran)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from magsrl.cli.answer import timing_line
from magsrl.engines.hf_batching import BatchScheduler, Pending
from magsrl.proto.policy import Usage
from magsrl.zoom.answer import split_timing
from magsrl.zoom.engine import GenerationRequest, GenerationResult, SamplingParams
from magsrl.zoom.loop import LoopOutcome


def test_scheduler_reports_how_long_a_request_queued() -> None:
    """Pins: no queue time on the result, so a request stuck behind a 0.3 s call could not
    say it waited (its wait was counted as overhead)."""

    def run_chunk(chunk: list[Pending]) -> list[GenerationResult]:
        time.sleep(0.3)
        return [GenerationResult([], None, 0, 300.0, "m") for _ in chunk]

    async def main() -> list[GenerationResult]:
        executor = ThreadPoolExecutor(max_workers=1)
        scheduler = BatchScheduler(run_chunk, executor, wait_s=0.0, max_batch=1)
        loop = asyncio.get_running_loop()
        futures = []
        for _ in range(2):
            future: asyncio.Future[GenerationResult] = loop.create_future()
            request = GenerationRequest([], SamplingParams(temperature=1.0))
            await scheduler.submit(Pending(request, None, future))
            futures.append(future)
        task = loop.create_task(scheduler.run())
        try:
            return list(await asyncio.gather(*futures))
        finally:
            task.cancel()
            executor.shutdown()

    first, second = asyncio.run(main())
    assert first.queue_ms is not None and first.queue_ms < 200
    assert second.queue_ms is not None and second.queue_ms >= 250


def _outcome(queue_ms: float | None) -> LoopOutcome:
    return LoopOutcome(
        answer="a",
        raw_answer="a",
        rounds=[],
        results=[],
        messages=[],
        usage=Usage(),
        engine_ms=800.0,
        magnifier_ms=0.0,
        queue_ms=queue_ms,
    )


def test_answer_timing_splits_queue_from_overhead() -> None:
    """Pins: `/answer`'s timing_ms had no queue field; the wait was in overhead."""
    timing = split_timing(4200.0, _outcome(3380.0))
    assert timing["queue"] == 3380.0
    assert timing["overhead"] == 20.0
    line = timing_line("tiny", timing)
    assert "queue 3380" in line and "overhead 20" in line


def test_openai_engine_says_it_cannot_see_the_queue() -> None:
    """Pins: an engine that cannot see its upstream's queue reporting a queue of 0 (a false
    figure) instead of saying it cannot tell."""
    timing = split_timing(900.0, _outcome(None))
    assert "queue" not in timing
    assert timing["overhead"] == 100.0
    assert "queue n/a" in timing_line("tiny", timing)
