"""The in-process engine's parts, without a model: the batch scheduler (grouping, chunking,
a failing chunk), the token budget, and whose fault an adapter or generation failure is.
Milliseconds; the engine with a real tiny model is covered by test_policy_api.py."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from magsrl.common.errors import InvalidInput, ResourceExhausted
from magsrl.engines import hf_generate
from magsrl.engines.hf_adapters import Adapters
from magsrl.engines.hf_batching import BatchScheduler, Pending, RunChunk
from magsrl.zoom.engine import GenerationRequest, GenerationResult, SamplingParams


def _result(tag: str) -> GenerationResult:
    return GenerationResult([], None, 0, 0.0, tag)


def _run(
    requests: list[tuple[GenerationRequest, str | None]],
    run_chunk: RunChunk,
    max_batch: int = 16,
) -> list[GenerationResult | BaseException]:
    async def main() -> list[GenerationResult | BaseException]:
        executor = ThreadPoolExecutor(max_workers=1)
        scheduler = BatchScheduler(run_chunk, executor, wait_s=0.0, max_batch=max_batch)
        loop = asyncio.get_running_loop()
        futures = []
        for request, adapter in requests:
            future: asyncio.Future[GenerationResult] = loop.create_future()
            await scheduler.submit(Pending(request, adapter, future))
            futures.append(future)
        task = loop.create_task(scheduler.run())
        try:
            return await asyncio.gather(*futures, return_exceptions=True)
        finally:
            task.cancel()
            executor.shutdown()

    return asyncio.run(main())


def _request(temperature: float = 1.0, seed: int | None = None, n: int = 1) -> GenerationRequest:
    return GenerationRequest([], SamplingParams(temperature=temperature, seed=seed, n=n))


def test_requests_are_grouped_by_sampling_and_adapter() -> None:
    """Pins: requests with different temperatures or adapters batched into one generate
    call (one would be sampled with the other's settings), or seeded ones batched (their
    random stream would depend on their neighbours)."""
    chunks: list[list[tuple[float, str | None, int | None]]] = []

    def run_chunk(chunk: list[Pending]) -> list[GenerationResult]:
        chunks.append(
            [(p.request.sampling.temperature, p.adapter, p.request.sampling.seed) for p in chunk]
        )
        return [_result("ok") for _ in chunk]

    requests = [
        (_request(1.0), None),
        (_request(1.0), None),
        (_request(0.0), None),
        (_request(1.0), "run-v1"),
        (_request(1.0, seed=1), None),
        (_request(1.0, seed=1), None),
    ]
    results = _run(requests, run_chunk)
    assert all(isinstance(r, GenerationResult) for r in results)
    assert sorted(map(len, chunks)) == [1, 1, 1, 1, 2]
    assert [(1.0, None, None), (1.0, None, None)] in chunks


def test_max_batch_counts_sequences_not_requests() -> None:
    """Pins: n=4 requests batched 16 at a time (64 sequences in one call, past the limit)."""
    sizes: list[int] = []

    def run_chunk(chunk: list[Pending]) -> list[GenerationResult]:
        sizes.append(len(chunk))
        return [_result("ok") for _ in chunk]

    _run([(_request(n=4), None) for _ in range(5)], run_chunk, max_batch=8)
    assert sizes == [2, 2, 1]


def test_a_failing_chunk_fails_its_requests_and_the_loop_goes_on() -> None:
    """Pins: one bad request killing the scheduler task, so every later request hangs."""

    def run_chunk(chunk: list[Pending]) -> list[GenerationResult]:
        if chunk[0].request.sampling.temperature == 0.5:
            raise InvalidInput("too long", param="messages")
        return [_result("ok") for _ in chunk]

    results = _run([(_request(0.5), None), (_request(1.0), None)], run_chunk)
    assert isinstance(results[0], InvalidInput)
    assert isinstance(results[1], GenerationResult)


@pytest.mark.parametrize(
    ("max_tokens", "prompt", "expected"),
    [
        pytest.param(None, 10, 50, id="default"),
        pytest.param(None, 90, 10, id="default-capped-by-room"),
        pytest.param(30, 10, 30, id="asked"),
    ],
)
def test_token_budget(max_tokens: int | None, prompt: int, expected: int) -> None:
    """Pins: a default that overruns the context, or an explicit max_tokens ignored."""
    sampling = SamplingParams(max_tokens=max_tokens)
    assert hf_generate.max_new_tokens(sampling, prompt, 100, 50) == expected


@pytest.mark.parametrize(
    ("max_tokens", "prompt", "param"),
    [
        pytest.param(None, 100, "messages", id="prompt-fills-context"),
        pytest.param(95, 10, "max_tokens", id="too-many-tokens"),
    ],
)
def test_token_budget_refusals_are_the_callers(
    max_tokens: int | None, prompt: int, param: str
) -> None:
    """Pins: an over-long request reaching generate (a crash, a 500) instead of a 400 that
    names what to shorten."""
    with pytest.raises(InvalidInput) as info:
        hf_generate.max_new_tokens(SamplingParams(max_tokens=max_tokens), prompt, 100, 50)
    assert info.value.param == param


def _adapter_folder(tmp_path: Path) -> Path:
    (tmp_path / "adapter_config.json").write_text("{}")
    return tmp_path


def test_adapter_out_of_memory_is_not_the_callers_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins: an adapter that cannot load for lack of memory reported as a 400 ("could not
    load the adapter"), telling a correct caller to fix their request."""
    import peft

    def no_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(peft.PeftModel, "from_pretrained", no_memory)
    adapters = Adapters(max_adapters=2)
    with pytest.raises(ResourceExhausted):
        adapters.attach(torch.nn.Linear(2, 2), "run-v1", _adapter_folder(tmp_path))
    assert adapters.paths == {}  # nothing half-registered


def test_a_corrupt_adapter_is_the_callers_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins: a foreign or corrupt adapter folder surfacing as a 500."""
    import peft

    def corrupt(*args: object, **kwargs: object) -> None:
        raise ValueError("size mismatch for lora_A")

    monkeypatch.setattr(peft.PeftModel, "from_pretrained", corrupt)
    with pytest.raises(InvalidInput) as info:
        Adapters(max_adapters=2).attach(torch.nn.Linear(2, 2), "x", _adapter_folder(tmp_path))
    assert info.value.param == "path"


@pytest.mark.parametrize(
    ("name", "path_has_config", "held", "param"),
    [
        pytest.param("base", True, 0, "name", id="base-name-taken"),
        pytest.param("run-v1", True, 1, "name", id="name-taken"),
        pytest.param("run-v9", True, 2, "name", id="limit"),
        pytest.param("run-v9", False, 0, "path", id="not-an-adapter"),
    ],
)
def test_adapter_requests_checked_before_loading(
    tmp_path: Path, name: str, path_has_config: bool, held: int, param: str
) -> None:
    """Pins: a taken name or a folder without adapter_config.json reaching peft (a slow,
    obscure failure) instead of a 400 naming the field."""
    adapters = Adapters(max_adapters=2)
    adapters.paths = {f"run-v{i + 1}": "/x" for i in range(held)}
    folder = _adapter_folder(tmp_path) if path_has_config else tmp_path
    with pytest.raises(InvalidInput) as info:
        adapters.check_new(name, str(folder), base_model="base")
    assert info.value.param == param


def test_generation_out_of_memory_is_resource_exhausted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins: an OOM during generate escaping as an unexpected 500 instead of a 503 to retry."""

    def no_memory(*args: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(hf_generate, "_generate", no_memory)
    with pytest.raises(ResourceExhausted):
        hf_generate.generate_chunk(None, [], Adapters.active, "base")  # type: ignore[arg-type]
