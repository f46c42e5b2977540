"""Micro-batching: concurrent requests for the same network share one forward pass.

The first item starts a short window (``wait_s``); whatever arrives in it, or queued while
the previous forward ran, is grouped by tensor shape and run in batches of at most
``max_batch`` on a single worker thread (torch releases the GIL, so the event loop keeps
serving).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Executor

import torch
from prometheus_client import Histogram

BatchFn = Callable[[torch.Tensor], torch.Tensor]
_Item = tuple[torch.Tensor, asyncio.Future[torch.Tensor]]


class MicroBatcher:
    def __init__(
        self,
        fn: BatchFn,
        executor: Executor,
        *,
        max_batch: int,
        wait_s: float,
        batch_sizes: Histogram | None = None,
    ) -> None:
        self.fn = fn
        self.executor = executor
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.batch_sizes = batch_sizes
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` is (3, H, W); returns the network's (3, sH, sW) output for it."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        await self._queue.put((x, future))
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _gather(self) -> list[_Item]:
        items = [await self._queue.get()]
        deadline = time.monotonic() + self.wait_s
        while True:
            # Drain what queued up during the last forward without waiting again.
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return items
            try:
                items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                return items

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather()
            groups: dict[tuple[int, ...], list[_Item]] = defaultdict(list)
            for item in items:
                groups[tuple(item[0].shape)].append(item)
            for group in groups.values():
                for start in range(0, len(group), self.max_batch):
                    chunk = [
                        it for it in group[start : start + self.max_batch] if not it[1].cancelled()
                    ]
                    if not chunk:
                        continue
                    batch = torch.stack([x for x, _ in chunk])
                    if self.batch_sizes is not None:
                        self.batch_sizes.observe(len(chunk))
                    try:
                        out = await loop.run_in_executor(self.executor, self.fn, batch)
                    except Exception as exc:  # one bad batch must not kill the loop
                        for _, fut in chunk:
                            if not fut.done():
                                fut.set_exception(exc)
                        continue
                    for i, (_, fut) in enumerate(chunk):
                        if not fut.done():
                            fut.set_result(out[i])
