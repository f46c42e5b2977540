"""Batching for the in-process engine: concurrent requests that share sampling settings and
adapter are gathered and run as one left-padded ``generate`` call.

A request waits in a queue; the scheduler takes whatever queued while the last call ran
(plus ``wait_s``, 0 by default: no added latency), groups it by ``group_key`` and runs each
group in chunks of at most ``max_batch`` sequences on the single model thread, so adapter
switches never race with a generation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from magsrl.common.errors import InvalidInput
from magsrl.zoom.engine import GenerationRequest, GenerationResult

log = logging.getLogger("magsrl.policy.hf")


@dataclass
class Pending:
    request: GenerationRequest
    adapter: str | None
    future: asyncio.Future[GenerationResult]
    on_delta: Any = None  # streaming callback, run on the loop
    # When the request entered the queue, so the result can say how long it waited there
    # (reported as its own ``queue`` time, not hidden in the answer's overhead).
    queued_at: float = field(default_factory=time.perf_counter)


def group_key(pending: Pending) -> tuple[Any, ...]:
    """Requests with equal keys may share one ``generate`` call."""
    s = pending.request.sampling
    # Seeded and streaming requests run alone: a batch would change their random stream
    # or mix their deltas.
    alone = id(pending) if (s.seed is not None or pending.on_delta is not None) else None
    return (
        pending.adapter,
        s.temperature,
        s.top_p,
        s.top_k,
        s.stop,
        s.n,
        s.max_tokens,
        s.logprobs,
        s.top_logprobs,
        alone,
    )


RunChunk = Callable[[list[Pending]], list[GenerationResult]]


class BatchScheduler:
    """Runs queued requests through ``run_chunk`` on ``executor``, one chunk at a time."""

    def __init__(
        self, run_chunk: RunChunk, executor: Executor, *, wait_s: float, max_batch: int
    ) -> None:
        self.run_chunk = run_chunk
        self.executor = executor
        self.wait_s = wait_s
        self.max_batch = max_batch
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()

    async def submit(self, pending: Pending) -> None:
        await self.queue.put(pending)

    async def run(self) -> None:
        """The scheduler's task: runs until cancelled."""
        while True:
            batch = [await self.queue.get()]
            await asyncio.sleep(self.wait_s)
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            groups: dict[tuple[Any, ...], list[Pending]] = {}
            for pending in batch:
                groups.setdefault(group_key(pending), []).append(pending)
            for group in groups.values():
                await self._run_group(group)

    async def _run_group(self, group: list[Pending]) -> None:
        loop = asyncio.get_running_loop()
        rows_per = group[0].request.sampling.n
        step = max(1, self.max_batch // rows_per)
        for start in range(0, len(group), step):
            chunk = [p for p in group[start : start + step] if not p.future.done()]
            if not chunk:
                continue
            started = time.perf_counter()
            results = await loop.run_in_executor(self.executor, self._run_isolated, chunk)
            for p, result in zip(chunk, results, strict=True):
                if p.future.done():
                    continue
                if isinstance(result, BaseException):
                    p.future.set_exception(result)
                else:
                    result.queue_ms = (started - p.queued_at) * 1000
                    p.future.set_result(result)

    def _run_isolated(self, chunk: list[Pending]) -> list[GenerationResult | BaseException]:
        """``run_chunk``, but a request that breaks the batch fails alone: the chunk is run
        again one request at a time, so the others still get their answers and no error
        quotes another client's prompt. Nothing is sampled before a batch fails its checks,
        and streaming requests always run alone, so no text is produced twice."""
        try:
            return list(self.run_chunk(chunk))
        except Exception as exc:
            if len(chunk) == 1:
                if not isinstance(exc, InvalidInput):  # the caller's fault is not news
                    log.exception("generation failed")
                return [exc]
        return [r for p in chunk for r in self._run_isolated([p])]
