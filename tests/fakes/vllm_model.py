"""The fake vLLM's model side: a real transformers Qwen-VL checkpoint (the tiny one in tests)
that renders chat requests, samples or scores completions, and reports log-probs the way
vLLM's sampler does for its ``--logprobs-mode``.

vllm/v1/sample/sampler.py (``Sampler``): ``raw_logprobs`` (the default) are the
log-softmax of the model's logits before anything touches them; ``processed_logprobs`` are
taken after the penalties, the temperature and top-k/top-p, i.e. of the distribution the
token was drawn from. Greedy requests (temperature < 1e-5) skip the temperature.
The top-k of each step comes after the sampled token, vLLM's order (vllm/v1/engine/logprobs.py).

A scripted completion (fixed text) is scored by one teacher-forced forward pass of the same
model, so its token ids and log-probs are as real as a sampled one's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from magsrl.models.loading import load_model, load_processor

log = logging.getLogger("fake-vllm")
SAMPLING_EPS = 1e-5  # vllm/v1/sample/sampler.py _SAMPLING_EPS: below it, greedy
EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")
LOGPROB_FLOOR = -9999.0  # vLLM clamps -inf log-probs (masked by top-k/top-p) to this


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    seed: int | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    top_logprobs: int = 0
    skip_special_tokens: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS


@dataclass
class Output:
    token_ids: list[int]
    text: str
    finish_reason: str  # stop | length
    stop_reason: str | int | None
    logprobs: list[float]  # of each sampled token, in the server's logprobs mode
    top: list[list[tuple[int, float]]]  # per step: sampled token first, then the top-k


class FakeModel:
    def __init__(
        self,
        path: Path,
        *,
        logprobs_mode: str,
        max_pixels: int | None,
        min_pixels: int | None,
        chat_template: str | None,
    ) -> None:
        self.processor = load_processor(
            path, min_pixels=min_pixels, max_pixels=max_pixels, chat_template=chat_template
        )
        self.tokenizer = self.processor.tokenizer
        self.model = load_model(path)
        self.model.eval()
        # `--generation-config vllm`: neutral sampling, nothing from generation_config.json.
        self.model.generation_config = GenerationConfig()
        self.logprobs_mode = logprobs_mode
        self.eos_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in EOS_TOKENS]
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.max_model_len = int(text_config.max_position_embeddings)

    # ---- prompts --------------------------------------------------------------------
    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=True, tokenize=False
        )

    def encode(self, prompt: str, images: list[Any]) -> dict[str, torch.Tensor]:
        return dict(self.processor(text=[prompt], images=images or None, return_tensors="pt"))

    def frame(self, inputs: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
        """``(width, height)`` each image was resized to, from the processor's grid."""
        patch = self.processor.image_processor.patch_size
        grid = inputs.get("image_grid_thw")
        return [] if grid is None else [(int(w) * patch, int(h) * patch) for _, h, w in grid]

    # ---- sampling -------------------------------------------------------------------
    def _processors(self, s: Sampling) -> LogitsProcessorList:
        # vLLM's order: penalties, then (sampling only) temperature, then top-k / top-p.
        steps: list[Any] = []
        if s.repetition_penalty != 1.0:
            steps.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
        if not s.greedy:
            if s.temperature != 1.0:
                steps.append(TemperatureLogitsWarper(s.temperature))
            if s.top_k > 0:
                steps.append(TopKLogitsWarper(s.top_k))
            if s.top_p < 1.0:
                steps.append(TopPLogitsWarper(s.top_p))
        return LogitsProcessorList(steps)

    def run(
        self,
        inputs: dict[str, torch.Tensor],
        s: Sampling,
        scripts: list[str | None],
    ) -> list[Output]:
        """One output per choice: the scripted text where one is given, sampled otherwise."""
        prompt_len = int(inputs["input_ids"].shape[1])
        sampled: list[Output] = []
        if any(script is None for script in scripts):
            sampled = self._sample(inputs, s, sum(script is None for script in scripts))
        it = iter(sampled)
        return [
            next(it) if script is None else self._score(inputs, s, script, prompt_len)
            for script in scripts
        ]

    def _sample(self, inputs: dict[str, torch.Tensor], s: Sampling, n: int) -> list[Output]:
        if s.seed is not None:
            torch.manual_seed(s.seed)
        # Greedy choices are all the same; transformers refuses n > 1 without sampling.
        rows = 1 if s.greedy else n
        config = GenerationConfig(
            max_new_tokens=s.max_tokens,
            num_return_sequences=rows,
            do_sample=not s.greedy,
            temperature=1.0,  # the processors below do the work, in vLLM's order
            top_k=0,
            top_p=1.0,
            eos_token_id=self.eos_ids,
            pad_token_id=self.eos_ids[-1],
            output_logits=True,
            output_scores=True,
            return_dict_in_generate=True,
        )
        with torch.no_grad():
            out = self.model.generate(
                **inputs, generation_config=config, logits_processor=self._processors(s)
            )
        prompt_len = int(inputs["input_ids"].shape[1])
        outputs = []
        for choice in range(n):
            row = choice % rows
            ids = out.sequences[row, prompt_len:].tolist()
            raw = [step[row] for step in out.logits]
            processed = [step[row] for step in out.scores]
            outputs.append(self._output(ids, raw, processed, s, stop_at_eos=True))
        return outputs

    def _score(
        self, inputs: dict[str, torch.Tensor], s: Sampling, script: str, prompt_len: int
    ) -> Output:
        ids = [*self.tokenizer.encode(script, add_special_tokens=False), self.eos_ids[0]]
        ids = ids[: s.max_tokens]
        full = dict(inputs)
        extra = torch.tensor([ids])
        full["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        if "mm_token_type_ids" in inputs:
            zeros = torch.zeros_like(extra, dtype=inputs["mm_token_type_ids"].dtype)
            full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], zeros], dim=1)
        with torch.no_grad():
            logits = self.model(**full).logits[0, prompt_len - 1 : -1].float()  # (T, V)
        processors = self._processors(s)
        raw, processed = [], []
        for k in range(len(ids)):
            step = logits[k : k + 1]
            raw.append(step[0])
            processed.append(processors(full["input_ids"][:, : prompt_len + k], step.clone())[0])
        return self._output(ids, raw, processed, s, stop_at_eos=True)

    def _output(
        self,
        ids: list[int],
        raw: list[torch.Tensor],
        processed: list[torch.Tensor],
        s: Sampling,
        stop_at_eos: bool,
    ) -> Output:
        finish, stop_reason, keep = "length", None, len(ids)
        for k, token in enumerate(ids):
            if stop_at_eos and token in self.eos_ids:
                finish, keep = "stop", k + 1
                break
        ids = ids[:keep]
        # vLLM's text leaves out the stop token itself (vllm/v1/engine/detokenizer.py).
        body = ids[:-1] if finish == "stop" else ids
        text = self.tokenizer.decode(body, skip_special_tokens=s.skip_special_tokens)
        for stop in s.stop:
            cut = text.find(stop)
            if cut != -1:
                ids, text, finish, stop_reason = self._cut(ids, stop, s), text[:cut], "stop", stop
                break
        steps = processed if self.logprobs_mode == "processed_logprobs" else raw
        logprobs, top = [], []
        for k, token in enumerate(ids):
            lps = torch.log_softmax(steps[k].float(), dim=-1)
            chosen = max(float(lps[token]), LOGPROB_FLOOR)
            logprobs.append(chosen)
            entries = [(token, chosen)]
            if s.top_logprobs:
                values, indices = torch.topk(lps, s.top_logprobs)
                entries += [
                    (int(i), max(float(v), LOGPROB_FLOOR))
                    for v, i in zip(values, indices, strict=True)
                    if int(i) != token
                ]
            top.append(entries)
        return Output(ids, text, finish, stop_reason, logprobs, top)

    def _cut(self, ids: list[int], stop: str, s: Sampling) -> list[int]:
        """The tokens up to and including the one that completed ``stop``."""
        for k in range(1, len(ids) + 1):
            if stop in self.tokenizer.decode(ids[:k], skip_special_tokens=s.skip_special_tokens):
                return ids[:k]
        return ids

    # ---- adapters -------------------------------------------------------------------
    def lora_rank(self, path: Path) -> int:
        return int(json.loads((path / "adapter_config.json").read_text())["r"])

    def add_lora(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(path), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        self.model.eval()

    def remove_lora(self, name: str, remaining: list[str]) -> None:
        if remaining:
            self.model.set_adapter(remaining[0])
            self.model.delete_adapter(name)
        else:
            self.model = self.model.unload()

    def use(self, adapter: str | None) -> Any:
        """A context in which generation runs through ``adapter`` (None: the base)."""
        import contextlib

        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()
