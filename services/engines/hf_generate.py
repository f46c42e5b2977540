"""One ``generate`` call of the in-process engine: a loaded Qwen-VL model, and a chunk of
requests turned into processor inputs, generated with a ``TokenRecorder`` watching every
step, and read back as completions with their token ids and log-probs.

Runs on the engine's single model thread; ``hf_batching`` decides what goes into a chunk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from magsrl.common.errors import InvalidInput, ResourceExhausted
from magsrl.engines.hf_batching import Pending
from magsrl.engines.recorder import TokenRecorder, warpers
from magsrl.zoom.engine import Completion, GenerationResult, SamplingParams, split_images
from magsrl.zoom.families import ModelFamily

log = logging.getLogger("magsrl.policy.hf")

AdapterScope = Callable[[Any, str | None], AbstractContextManager[None]]


@dataclass
class LoadedModel:
    """A model with everything generation needs beside it. ``model`` changes when adapters
    are attached (peft wraps it), so it is read afresh on every call."""

    model: Any
    processor: Any
    tokenizer: Any
    family: ModelFamily
    template: str
    device: torch.device
    max_context: int
    default_max_tokens: int
    eos_ids: list[int]
    pad_id: int


def load(
    path: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    min_pixels: int | None,
    max_pixels: int | None,
    max_context: int | None,
    default_max_tokens: int,
) -> LoadedModel:
    from magsrl.models.loading import load_family, load_model, load_processor
    from magsrl.zoom.families import template_text

    family = load_family(path)
    processor = load_processor(path, min_pixels=min_pixels, max_pixels=max_pixels)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    model = load_model(path, device=str(device), dtype=dtype)
    model.eval()
    model.generation_config = neutral_generation_config(model.generation_config)
    config = model.config
    text_config = getattr(config, "text_config", config)
    eos_ids = [
        i
        for i in (tokenizer.convert_tokens_to_ids(t) for t in family.eos_tokens)
        if isinstance(i, int) and i >= 0
    ]
    pad_id = tokenizer.pad_token_id
    return LoadedModel(
        model=model,
        processor=processor,
        tokenizer=tokenizer,
        family=family,
        template=template_text(family),
        device=device,
        max_context=max_context or int(text_config.max_position_embeddings),
        default_max_tokens=default_max_tokens,
        eos_ids=eos_ids,
        pad_id=eos_ids[-1] if pad_id is None else pad_id,
    )


def prompt_text(lm: LoadedModel, pending: Pending) -> tuple[str, list[Any]]:
    """The chat template rendered for one request, and its images in order."""
    messages, images = split_images(pending.request.messages)
    text = lm.tokenizer.apply_chat_template(
        messages,
        tools=pending.request.tools or None,
        chat_template=lm.template,
        add_generation_prompt=True,
        tokenize=False,
    )
    return text, images


def generate_chunk(
    lm: LoadedModel, chunk: list[Pending], adapter_scope: AdapterScope, base_model: str
) -> list[GenerationResult]:
    """Generates every request of ``chunk`` (same sampling, same adapter) in one call;
    results name ``base_model`` when a request names no model."""
    try:
        return _generate(lm, chunk, adapter_scope, base_model)
    except torch.OutOfMemoryError as exc:
        raise ResourceExhausted(
            f"out of memory generating {len(chunk)} request(s); retry, or ask for fewer "
            "tokens or images"
        ) from exc


def _generate(
    lm: LoadedModel, chunk: list[Pending], adapter_scope: AdapterScope, base_model: str
) -> list[GenerationResult]:
    started = time.perf_counter()
    prepared = [prompt_text(lm, p) for p in chunk]
    images = [im for _, ims in prepared for im in ims]
    inputs = lm.processor(
        text=[text for text, _ in prepared],
        images=images or None,
        return_tensors="pt",
        padding=True,
    )
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    sampling = chunk[0].request.sampling
    for length in lengths:
        # Each prompt on its own first: the batch's longest must not speak for the others.
        max_new_tokens(sampling, length, lm.max_context, lm.default_max_tokens)
    max_new = max_new_tokens(sampling, max(lengths), lm.max_context, lm.default_max_tokens)
    inputs = inputs.to(lm.device)
    rows = len(chunk) * sampling.n
    deltas = [p.on_delta for p in chunk]

    def on_delta(row: int, text: str, ids: list[int], finish: Any) -> None:
        callback = deltas[row // sampling.n]
        if callback is not None:
            callback(row % sampling.n, text, ids, finish)

    recorder = TokenRecorder(
        rows,
        decode=lambda ids: lm.tokenizer.decode(ids, skip_special_tokens=True),
        eos_ids=lm.eos_ids,
        stop=sampling.stop,
        want_logprobs=sampling.logprobs,
        top_k=sampling.top_logprobs,
        on_delta=on_delta if any(deltas) else None,
    )
    with adapter_scope(lm.model, chunk[0].adapter), torch.no_grad():
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        lm.model.generate(
            **inputs,
            generation_config=generation_config(sampling, max_new, lm.eos_ids, lm.pad_id),
            logits_processor=[*warpers(sampling), recorder],
            streamer=recorder,
            tokenizer=lm.tokenizer if sampling.stop else None,
        )
    engine_ms = (time.perf_counter() - started) * 1000
    results = []
    for k, pending in enumerate(chunk):
        ids = inputs["input_ids"][k][inputs["attention_mask"][k].bool()].tolist()
        completions = [
            completion(lm.tokenizer, recorder.rows[k * sampling.n + j], sampling)
            for j in range(sampling.n)
        ]
        results.append(
            GenerationResult(
                completions=completions,
                prompt_token_ids=ids,
                prompt_tokens=len(ids),
                engine_ms=engine_ms,
                model=pending.request.model or base_model,
            )
        )
    return results


def max_new_tokens(
    sampling: SamplingParams, prompt_len: int, max_context: int, default: int
) -> int:
    """What may be generated after a ``prompt_len``-token prompt; a request that cannot fit
    is the caller's to shorten."""
    room = max_context - prompt_len
    if room <= 0:
        raise InvalidInput(
            f"the prompt is {prompt_len} tokens, over this model's context of "
            f"{max_context}; shorten it or send fewer or smaller images",
            param="messages",
        )
    if sampling.max_tokens is None:
        return min(default, room)
    if sampling.max_tokens > room:
        raise InvalidInput(
            f"max_tokens={sampling.max_tokens} plus the {prompt_len}-token "
            f"prompt exceeds the context of {max_context}; ask for at most {room}",
            param="max_tokens",
        )
    return sampling.max_tokens


def generation_config(
    sampling: SamplingParams, max_new: int, eos_ids: list[int], pad_id: int
) -> Any:
    from transformers import GenerationConfig

    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new,
        "num_return_sequences": sampling.n,
        "eos_token_id": eos_ids,
        "pad_token_id": pad_id,
        "do_sample": sampling.temperature > 0,
    }
    if sampling.temperature > 0:
        # Temperature, top-k and top-p are applied by warpers() in front of the recorder;
        # transformers must add none of its own (its top_k defaults to 50).
        kwargs.update(temperature=1.0, top_p=1.0, top_k=0)
    if sampling.stop:
        kwargs["stop_strings"] = list(sampling.stop)
    return GenerationConfig(**kwargs)


def completion(tokenizer: Any, row: Any, sampling: SamplingParams) -> Completion:
    """One recorded row as a completion, with per-token text and log-probs when asked for."""
    tokens = top = None
    if sampling.logprobs:
        tokens = [tokenizer.decode([t]) for t in row.token_ids]
        if sampling.top_logprobs:
            top = [[(tokenizer.decode([t]), lp) for t, lp in step] for step in row.top]
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
