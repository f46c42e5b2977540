"""The ``hf`` engine: a transformers Qwen-VL model in-process, with batched generation,
sampled token ids and log-probs, and several peft LoRA adapters picked per request.

Concurrent requests that share sampling settings and adapter are left-padded into one
``generate`` call. All model work runs on one thread, so adapter switches never race.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from magsrl.common.errors import BadRequest
from magsrl.engines.recorder import TokenRecorder, warpers
from magsrl.models.device import pick_device, pick_dtype
from magsrl.policy.config import PolicySettings
from magsrl.zoom.engine import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    StreamDelta,
    split_images,
)

log = logging.getLogger("magsrl.policy.hf")
EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class _Pending:
    request: GenerationRequest
    adapter: str | None
    future: asyncio.Future[GenerationResult]
    on_delta: Any = None  # streaming callback, run on the loop


@dataclass
class _Prepared:
    text: str
    images: list[Any] = field(default_factory=list)


class HFEngine(Engine):
    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        self.base_model = settings.served_model_name or settings.policy_model
        self.device = pick_device(settings.device)
        self.dtype = pick_dtype(settings.dtype, self.device)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-generate")
        self._adapters: dict[str, str] = {}
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._load_error: str | None = None
        self._loaded = asyncio.Event()
        self.model: Any = None
        self.processor: Any = None

    # ---- loading --------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load)
        except Exception as exc:
            log.exception("could not load the model")
            self._load_error = f"{exc.__class__.__name__}: {exc}"
            return
        self._loaded.set()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    def _load(self) -> None:
        from magsrl.models.loading import load_family, load_model, load_processor
        from magsrl.models.tiny import resolve_model
        from magsrl.zoom.families import template_text

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        path = resolve_model(self.settings.policy_model)
        started = time.perf_counter()
        self.family = load_family(Path(path))
        self.processor = load_processor(
            Path(path),
            min_pixels=self.settings.min_image_pixels,
            max_pixels=self.settings.max_image_pixels_model,
        )
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.template = template_text(self.family)
        self.model = load_model(Path(path), device=str(self.device), dtype=self.dtype)
        self.model.eval()
        self.model.generation_config = neutral_generation_config(self.model.generation_config)
        config = self.model.config
        text_config = getattr(config, "text_config", config)
        self.max_context = self.settings.max_context or int(text_config.max_position_embeddings)
        self.eos_ids = [
            i
            for i in (self.tokenizer.convert_tokens_to_ids(t) for t in EOS_TOKENS)
            if isinstance(i, int) and i >= 0
        ]
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_ids[-1]
        log.info(
            "loaded %s (%s) on %s/%s in %.2fs",
            path,
            self.family.name,
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

    # ---- models and adapters --------------------------------------------------------
    def model_names(self) -> list[str]:
        return [self.base_model, *self._adapters]

    def adapter_paths(self) -> dict[str, str]:
        return dict(self._adapters)

    async def load_adapter(self, name: str, path: str) -> None:
        if name == self.base_model or name in self._adapters:
            raise BadRequest(
                f"a model named '{name}' is already loaded; unload it first or pick another name",
                param="name",
            )
        if len(self._adapters) >= self.settings.max_adapters:
            raise BadRequest(
                f"already holding {len(self._adapters)} adapters (the limit, "
                "MAGSRL_MAX_ADAPTERS); unload one first",
                param="name",
            )
        folder = Path(path)
        if not (folder / "adapter_config.json").is_file():
            raise BadRequest(
                f"no peft adapter at '{path}': adapter_config.json is missing", param="path"
            )
        await self._ensure_loaded()
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self._load_adapter_sync, name, folder
        )
        self._adapters[name] = str(folder)

    def _load_adapter_sync(self, name: str, folder: Path) -> None:
        from peft import PeftModel

        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(folder), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
            self.model.eval()
        except Exception as exc:  # a foreign or corrupt adapter is the caller's fault
            raise BadRequest(
                f"could not load the adapter at '{folder}': {exc}", param="path"
            ) from exc

    async def unload_adapter(self, name: str) -> None:
        self.check_model(name)
        if name == self.base_model:
            raise BadRequest("the base model cannot be unloaded", param="name")
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self._unload_adapter_sync, name
        )
        del self._adapters[name]

    def _unload_adapter_sync(self, name: str) -> None:
        remaining = [n for n in self._adapters if n != name]
        if remaining:
            # peft keeps pointing at a deleted adapter unless another is made active first.
            self.model.set_adapter(remaining[0])
            self.model.delete_adapter(name)
        else:
            # The last one: back to the plain base model, with no LoRA layers left in it.
            self.model = self.model.unload()

    async def _ensure_loaded(self) -> None:
        reason = await self.ready()
        if reason:
            from magsrl.common.errors import ServiceUnavailable

            raise ServiceUnavailable(reason)

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        from magsrl.zoom.families import resized_size

        min_pixels, max_pixels = self.processor.pixel_bounds()
        return resized_size(
            width, height, self.family, min_pixels=min_pixels, max_pixels=max_pixels
        )

    # ---- generation -----------------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        await self._ensure_loaded()
        adapter = self.check_model(request.model)
        future: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(request, adapter, future))
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
        await self._queue.put(_Pending(request, adapter, future, on_delta))
        while not future.done() or not deltas.empty():
            getter = asyncio.ensure_future(deltas.get())
            done, _ = await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()
        yield future.result()

    def _group_key(self, pending: _Pending) -> tuple[Any, ...]:
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

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wait_s = self.settings.batch_wait_ms / 1000.0
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(wait_s)
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            groups: dict[tuple[Any, ...], list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(self._group_key(pending), []).append(pending)
            for group in groups.values():
                rows_per = group[0].request.sampling.n
                step = max(1, self.settings.max_batch // rows_per)
                for start in range(0, len(group), step):
                    chunk = [p for p in group[start : start + step] if not p.future.done()]
                    if not chunk:
                        continue
                    try:
                        results = await loop.run_in_executor(self._executor, self._generate, chunk)
                    except Exception as exc:
                        if not isinstance(exc, BadRequest):
                            log.exception("generation failed")
                        for p in chunk:
                            if not p.future.done():
                                p.future.set_exception(exc)
                        continue
                    for p, result in zip(chunk, results, strict=True):
                        if not p.future.done():
                            p.future.set_result(result)

    def _prepare(self, request: GenerationRequest) -> _Prepared:
        messages, images = split_images(request.messages)
        text = self.tokenizer.apply_chat_template(
            messages,
            tools=request.tools or None,
            chat_template=self.template,
            add_generation_prompt=True,
            tokenize=False,
        )
        return _Prepared(text, images)

    def _generate(self, chunk: list[_Pending]) -> list[GenerationResult]:
        started = time.perf_counter()
        prepared = [self._prepare(p.request) for p in chunk]
        images = [im for prep in prepared for im in prep.images]
        inputs = self.processor(
            text=[prep.text for prep in prepared],
            images=images or None,
            return_tensors="pt",
            padding=True,
        )
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        sampling = chunk[0].request.sampling
        max_new = self._max_new_tokens(sampling, max(lengths))
        inputs = inputs.to(self.device)
        rows = len(chunk) * sampling.n
        deltas = [p.on_delta for p in chunk]

        def on_delta(row: int, text: str, ids: list[int], finish: Any) -> None:
            callback = deltas[row // sampling.n]
            if callback is not None:
                callback(row % sampling.n, text, ids, finish)

        recorder = TokenRecorder(
            rows,
            decode=self._decode,
            eos_ids=self.eos_ids,
            stop=sampling.stop,
            want_logprobs=sampling.logprobs,
            top_k=sampling.top_logprobs,
            on_delta=on_delta if any(deltas) else None,
        )
        with self._adapter(chunk[0].adapter), torch.no_grad():
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            self.model.generate(
                **inputs,
                generation_config=self._generation_config(sampling, max_new),
                logits_processor=[*warpers(sampling), recorder],
                streamer=recorder,
                tokenizer=self.tokenizer if sampling.stop else None,
            )
        engine_ms = (time.perf_counter() - started) * 1000
        results = []
        for k, pending in enumerate(chunk):
            ids = inputs["input_ids"][k][inputs["attention_mask"][k].bool()].tolist()
            completions = [
                self._completion(recorder.rows[k * sampling.n + j], sampling)
                for j in range(sampling.n)
            ]
            results.append(
                GenerationResult(
                    completions=completions,
                    prompt_token_ids=ids,
                    prompt_tokens=len(ids),
                    engine_ms=engine_ms,
                    model=pending.request.model or self.base_model,
                )
            )
        return results

    def _max_new_tokens(self, sampling: SamplingParams, prompt_len: int) -> int:
        room = self.max_context - prompt_len
        if room <= 0:
            raise BadRequest(
                f"the prompt is {prompt_len} tokens, over this model's context of "
                f"{self.max_context}; shorten it or send fewer or smaller images",
                param="messages",
            )
        if sampling.max_tokens is None:
            return min(self.settings.default_max_tokens, room)
        if sampling.max_tokens > room:
            raise BadRequest(
                f"max_tokens={sampling.max_tokens} plus the {prompt_len}-token "
                f"prompt exceeds the context of {self.max_context}; ask for at "
                f"most {room}",
                param="max_tokens",
            )
        return sampling.max_tokens

    def _generation_config(self, sampling: SamplingParams, max_new: int) -> Any:
        from transformers import GenerationConfig

        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new,
            "num_return_sequences": sampling.n,
            "eos_token_id": self.eos_ids,
            "pad_token_id": self.pad_id,
            "do_sample": sampling.temperature > 0,
        }
        if sampling.temperature > 0:
            # Temperature, top-k and top-p are applied by warpers() in front of the recorder;
            # transformers must add none of its own (its top_k defaults to 50).
            kwargs.update(temperature=1.0, top_p=1.0, top_k=0)
        if sampling.stop:
            kwargs["stop_strings"] = list(sampling.stop)
        return GenerationConfig(**kwargs)

    @contextlib.contextmanager
    def _adapter(self, name: str | None) -> Iterator[None]:
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            yield
        elif name is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(name)
            yield

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _completion(self, row: Any, sampling: SamplingParams) -> Completion:
        tokens = top = None
        if sampling.logprobs:
            tokens = [self.tokenizer.decode([t]) for t in row.token_ids]
            if sampling.top_logprobs:
                top = [[(self.tokenizer.decode([t]), lp) for t, lp in step] for step in row.top]
        return Completion(
            text=row.text,
            token_ids=list(row.token_ids),
            finish_reason=row.finish_reason or "length",
            logprobs=list(row.logprobs) if sampling.logprobs else None,
            tokens=tokens,
            top_logprobs=top,
        )


def neutral_generation_config(loaded: Any) -> Any:
    """A generation config with only the checkpoint's special token ids. transformers fills
    every field a request leaves unset from the model's generation_config.json (real Qwen
    checkpoints ship repetition_penalty 1.05, top_k, top_p): the sampler would then draw
    from a distribution the learner never computes. Requests name what they want; nothing
    else applies (vLLM's `--generation-config vllm`, as compose.yaml runs it)."""
    from transformers import GenerationConfig

    keep = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    ids = {k: getattr(loaded, k, None) for k in keep if getattr(loaded, k, None) is not None}
    dropped = {
        k: v
        for k, v in loaded.to_diff_dict().items()
        if k not in keep and k not in ("transformers_version", "_from_model_config")
    }
    if dropped:
        log.info("not sampling with the checkpoint's generation_config.json: %s", dropped)
    return GenerationConfig(**ids)
