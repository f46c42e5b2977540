"""Micro-batching mechanics, in-process: concurrent submits share forward passes, results go
back to the right caller, shapes never mix, and a failing batch fails only its callers."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from magsrl.magnifier.batcher import MicroBatcher


def make(fn, max_batch: int = 8, wait_s: float = 0.01) -> tuple[MicroBatcher, list[int]]:
    sizes: list[int] = []

    def run(batch: torch.Tensor) -> torch.Tensor:
        sizes.append(batch.shape[0])
        return fn(batch)

    return MicroBatcher(run, ThreadPoolExecutor(1), max_batch=max_batch, wait_s=wait_s), sizes


def test_concurrent_submits_are_batched_and_routed_back() -> None:
    async def main() -> None:
        batcher, sizes = make(lambda b: b * 2)
        inputs = [torch.full((3, 4, 4), float(i)) for i in range(12)]
        outs = await asyncio.gather(*[batcher.submit(x) for x in inputs])
        await batcher.close()
        for i, out in enumerate(outs):
            assert torch.equal(out, torch.full((3, 4, 4), 2.0 * i))
        assert sum(sizes) == 12
        assert max(sizes) == 8  # capped at max_batch
        assert len(sizes) == 2

    asyncio.run(main())


def test_shapes_are_never_mixed() -> None:
    async def main() -> None:
        batcher, sizes = make(lambda b: b + 1)
        small = [torch.zeros(3, 4, 4) for _ in range(3)]
        large = [torch.zeros(3, 8, 8) for _ in range(2)]
        outs = await asyncio.gather(*[batcher.submit(x) for x in small + large])
        await batcher.close()
        assert [tuple(o.shape) for o in outs] == [(3, 4, 4)] * 3 + [(3, 8, 8)] * 2
        assert sorted(sizes) == [2, 3]

    asyncio.run(main())


def test_a_failing_batch_fails_its_callers_and_the_loop_survives() -> None:
    async def main() -> None:
        def fn(batch: torch.Tensor) -> torch.Tensor:
            if batch.shape[-1] == 5:
                raise RuntimeError("boom")
            return batch

        batcher, _ = make(fn)
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(torch.zeros(3, 5, 5))
        out = await batcher.submit(torch.ones(3, 4, 4))
        await batcher.close()
        assert torch.equal(out, torch.ones(3, 4, 4))

    asyncio.run(main())
