"""The ``hf`` engine: a transformers Qwen-VL model in-process, with batched generation,
sampled token ids and log-probs, and several peft LoRA adapters picked per request.

This file is the engine's face (the ``Engine`` interface: start, ready, generate, stream,
adapters); the work lives beside it, one idea per file:

- ``hf_generate``: the loaded model and one ``generate`` call over a chunk of requests;
- ``hf_batching``: which concurrent requests share a call, and the queue that runs them;
- ``hf_adapters``: the LoRA adapters held, attached and activated on the peft model.

All model work runs on one thread, so adapter switches never race with a generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from magsrl.common.errors import InvalidInput, ServiceUnavailable
from magsrl.engines import hf_generate, hf_weights
from magsrl.engines.hf_adapters import Adapters
from magsrl.engines.hf_batching import BatchScheduler, Pending
from magsrl.engines.settings import EngineSettings
from magsrl.models.device import pick_device, pick_dtype
from magsrl.zoom.engine import (
    Engine,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
)
from magsrl.zoom.families import ModelFamily

log = logging.getLogger("magsrl.policy.hf")


class HFEngine(Engine):
    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.base_model = settings.served_model_name or settings.policy_model
        self.device = pick_device(settings.device)
        self.dtype = pick_dtype(settings.dtype, self.device)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-generate")
        self.adapters = Adapters(settings.max_adapters)
        self._scheduler = BatchScheduler(
            self._run_chunk,
            self._executor,
            wait_s=settings.batch_wait_ms / 1000.0,
            max_batch=settings.max_batch,
        )
        self._worker: asyncio.Task[None] | None = None
        self._load_error: str | None = None
        self._loaded = asyncio.Event()
        self.lm: hf_generate.LoadedModel | None = None

    # The loaded model's parts, as callers (scripts, tests, the learner check) read them.
    @property
    def model(self) -> Any:
        return self.lm.model if self.lm else None

    @property
    def processor(self) -> Any:
        return self.lm.processor if self.lm else None

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer if self.lm else None

    @property
    def family(self) -> ModelFamily:
        if self.lm is None:
            raise ServiceUnavailable(f"loading model {self.settings.policy_model}")
        return self.lm.family

    # ---- loading --------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load)
        except Exception as exc:
            log.exception("could not load the model")
            self._load_error = f"{exc.__class__.__name__}: {exc}"
            return
        self._loaded.set()
        self._worker = asyncio.get_running_loop().create_task(self._scheduler.run())

    def _load(self) -> None:
        from magsrl.models.tiny import resolve_model

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        path = resolve_model(self.settings.policy_model)
        started = time.perf_counter()
        self.lm = hf_generate.load(
            Path(path),
            device=self.device,
            dtype=self.dtype,
            min_pixels=self.settings.min_image_pixels,
            max_pixels=self.settings.max_image_pixels_model,
            max_context=self.settings.max_context,
            default_max_tokens=self.settings.default_max_tokens,
        )
        log.info(
            "loaded %s (%s) on %s/%s in %.2fs",
            path,
            self.lm.family.name,
            self.device,
            self.dtype,
            time.perf_counter() - started,
        )

    async def ready(self) -> str | None:
        if self._load_error:
            return f"model failed to load: {self._load_error}"
        if not self._loaded.is_set():
            return f"loading model {self.settings.policy_model}"
        return None

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _ensure_loaded(self) -> hf_generate.LoadedModel:
        reason = await self.ready()
        if reason or self.lm is None:
            raise ServiceUnavailable(reason or "the model is not loaded")
        return self.lm

    # ---- models and adapters --------------------------------------------------------
    def model_names(self) -> list[str]:
        alias = [self._weights_name] if self._weights_name is not None else []
        return [self.base_model, *alias, *self.adapters.paths]

    def adapter_paths(self) -> dict[str, str]:
        return dict(self.adapters.paths)

    async def load_adapter(self, name: str, path: str) -> None:
        if name in self.model_names():  # the base, an adapter, or reloaded weights' name
            raise InvalidInput(
                f"a model named '{name}' is already loaded; unload it first or pick another name",
                param="name",
            )
        folder = self.adapters.check_new(name, path, self.base_model)
        lm = await self._ensure_loaded()

        def attach() -> None:
            lm.model = self.adapters.attach(lm.model, name, folder)

        await asyncio.get_running_loop().run_in_executor(self._executor, attach)

    async def unload_adapter(self, name: str) -> None:
        self.check_model(name)
        if name not in self.adapters.paths:  # the base, or the name of reloaded weights
            raise InvalidInput(
                f"'{name}' is not an adapter; full weights go back with DELETE /v1/weights",
                param="name",
            )
        lm = await self._ensure_loaded()

        def detach() -> None:
            lm.model = self.adapters.detach(lm.model, name)

        await asyncio.get_running_loop().run_in_executor(self._executor, detach)

    # ---- full weights (POST /v1/weights): a full fine-tuning version replaces the base --------
    weights_refusal = None  # this engine can
    _weights_name: str | None = None
    _weights_path: str | None = None

    def loaded_weights(self) -> tuple[str | None, str | None]:
        return self._weights_name, self._weights_path

    def check_model(self, name: str | None) -> str | None:
        if name is not None and name == self._weights_name:
            return None  # the reloaded base model, not an adapter
        return super().check_model(name)

    async def reload_weights(self, path: str | None, name: str | None) -> None:
        """Loads the weights of model folder ``path`` (None: the served checkpoint's own)
        between two generate calls: the copy runs on the model thread, so no batch sees half
        of it."""
        from magsrl.models.tiny import resolve_model

        lm = await self._ensure_loaded()
        folder = Path(path) if path is not None else Path(resolve_model(self.settings.policy_model))
        await asyncio.get_running_loop().run_in_executor(
            self._executor,
            lambda: hf_weights.copy_weights(
                lm.model, folder, device=self.device, dtype=self.dtype, base_name=self.base_model
            ),
        )
        self._weights_name = name if path is not None else None
        self._weights_path = str(folder) if path is not None else None

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        from magsrl.zoom.families import resized_size

        min_pixels, max_pixels = self.processor.pixel_bounds()
        return resized_size(
            width, height, self.family, min_pixels=min_pixels, max_pixels=max_pixels
        )

    # ---- generation -----------------------------------------------------------------
    def _run_chunk(self, chunk: list[Pending]) -> list[GenerationResult]:
        assert self.lm is not None  # the scheduler starts only once the model is loaded
        return hf_generate.generate_chunk(self.lm, chunk, Adapters.active, self.base_model)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        await self._ensure_loaded()
        adapter = self.check_model(request.model)
        future: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        await self._scheduler.submit(Pending(request, adapter, future))
        return await future

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        await self._ensure_loaded()
        adapter = self.check_model(request.model)
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[StreamDelta] = asyncio.Queue()

        def on_delta(index: int, text: str, ids: list[int], finish: Any) -> None:
            loop.call_soon_threadsafe(deltas.put_nowait, StreamDelta(index, text, ids, finish))

        future: asyncio.Future[GenerationResult] = loop.create_future()
        await self._scheduler.submit(Pending(request, adapter, future, on_delta))
        while not future.done() or not deltas.empty():
            getter = asyncio.ensure_future(deltas.get())
            done, _ = await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()
        yield future.result()
