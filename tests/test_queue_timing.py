"""Queue wait reported as its own time (issue 17): a request that waited in the hf engine's
batch queue behind another call used to show that wait as the answer's "overhead"
(`model 821 + magnifier 0 + overhead 3384` while an eval ran)."""

from __future__ import annotations

import asyncio
import base64
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import httpx
import pytest

from magsrl.cli.answer import timing_line
from magsrl.engines.hf_batching import BatchScheduler, Pending
from magsrl.proto.policy import Usage
from magsrl.zoom.answer import split_timing
from magsrl.zoom.engine import GenerationRequest, GenerationResult, SamplingParams
from magsrl.zoom.loop import LoopOutcome
from tests.conftest import RunningService, photo, png_bytes


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


@pytest.mark.slow
def test_answers_sharing_the_hf_engine_report_their_queue(policy: RunningService) -> None:
    """Pins: /answer's timing_ms from the real hf engine had no queue; with three requests
    at once, at least one waits behind another's generation and says so."""
    body = {
        "image": {"b64": base64.b64encode(png_bytes(photo("coffee"))).decode()},
        "question": "What is this?",
        "max_tokens": 16,
        "temperature": 1.0,
        "seed": 1,  # seeded requests run alone: the others must wait for the engine
        "zoom": "off",
    }
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(httpx.post, f"{policy.url}/answer", json=body, timeout=300)
            for _ in range(3)
        ]
        timings = []
        for future in as_completed(futures):
            resp = future.result()
            assert resp.status_code == 200, resp.text
            timings.append(resp.json()["timing_ms"])
    assert all("queue" in t and t["overhead"] >= -1 for t in timings)
    assert max(t["queue"] for t in timings) > 0.5 * min(t["model"] for t in timings)
