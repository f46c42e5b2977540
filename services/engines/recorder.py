"""Records what ``generate`` samples, token by token: ids, log-probs, text deltas and why each
sequence finished. One object plays two transformers roles at once:

- a ``LogitsProcessor`` that runs last, after the sampling warpers of ``warpers()``
  (temperature, top-k, top-p: the hf engine passes them itself, in front of the recorder,
  and lets transformers add none), so the log-softmax it keeps is of the very distribution
  the next token is drawn from, and
- a ``BaseStreamer`` whose ``put`` receives the sampled tokens right after, so the sampled
  token's log-prob is gathered at once and only one step of log-probs is ever held
  (``output_logits`` would keep steps x rows x vocab floats: gigabytes for a real vocab).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor
from transformers.generation.streamers import BaseStreamer

from magsrl.zoom.engine import FinishReason, SamplingParams

# What an excluded token's log-prob is reported as: a finite floor, as vLLM reports -inf
# (vllm/entrypoints/openai/serving_chat.py, _create_chat_logprobs: max(logprob, -9999.0)),
# so OpenAI JSON stays valid.
LOGPROB_FLOOR = -9999.0


def warpers(sampling: SamplingParams) -> list[LogitsProcessor]:
    """The processors that turn the model's logits into the sampling distribution, in the
    order transformers and vLLM apply them: temperature, then top-k, then top-p. Nothing
    else (no repetition penalty, no min-length): the learner's log_softmax(logits / T) is
    this distribution whenever top-k and top-p keep every token. Greedy decoding: none."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    if sampling.temperature <= 0:
        return []
    out: list[LogitsProcessor] = []
    if sampling.temperature != 1.0:
        out.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        out.append(TopKLogitsWarper(top_k=sampling.top_k))
    if sampling.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=sampling.top_p))
    return out


@dataclass
class RowState:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of `text` already handed out as deltas
    finish_reason: FinishReason | None = None


class TokenRecorder(LogitsProcessor, BaseStreamer):
    def __init__(
        self,
        rows: int,
        *,
        decode: Callable[[list[int]], str],
        eos_ids: Sequence[int],
        stop: Sequence[str],
        want_logprobs: bool,
        top_k: int,
        on_delta: Callable[[int, str, list[int], FinishReason | None], None] | None = None,
    ) -> None:
        self.rows = [RowState() for _ in range(rows)]
        self.decode = decode
        self.eos_ids = set(eos_ids)
        self.stop = [s for s in stop if s]
        self.want_logprobs = want_logprobs
        self.top_k = top_k
        self.on_delta = on_delta
        self._step: torch.Tensor | None = None
        self._seen_prompt = False

    # LogitsProcessor
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # ``scores`` are already warped (see warpers()): their softmax is what is sampled.
        if self.want_logprobs:
            self._step = torch.log_softmax(scores.float(), dim=-1)
        return scores

    # BaseStreamer
    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:  # generate() first streams the prompt
            self._seen_prompt = True
            return
        tokens = value.reshape(-1).tolist()
        for i, token in enumerate(tokens):
            row = self.rows[i]
            if row.finish_reason is not None:
                continue  # padding after this row finished
            row.token_ids.append(token)
            if self._step is not None:
                row.logprobs.append(float(self._step[i, token]))
                if self.top_k:
                    values, idx = torch.topk(self._step[i], self.top_k)
                    values = values.clamp(min=LOGPROB_FLOOR)
                    row.top.append(list(zip(idx.tolist(), values.tolist(), strict=True)))
            self._advance(i, row, token)
        self._step = None

    def _advance(self, i: int, row: RowState, token: int) -> None:
        if token in self.eos_ids:
            row.finish_reason = "stop"
        else:
            row.text = self.decode([t for t in row.token_ids if t not in self.eos_ids])
            for stop in self.stop:
                cut = row.text.find(stop, max(0, row.emitted - len(stop)))
                if cut >= 0:
                    row.text = row.text[:cut]
                    row.finish_reason = "stop"
                    break
        # Hold back a trailing partial UTF-8 character, and any tail that could be the
        # start of a stop string, until the next token settles it.
        safe = len(row.text)
        if row.finish_reason is None:
            if row.text.endswith("\ufffd"):
                safe = len(row.text.rstrip("\ufffd"))
            for stop in self.stop:
                for k in range(min(len(stop) - 1, safe), 0, -1):
                    if row.text[:safe].endswith(stop[:k]):
                        safe -= k
                        break
        if safe > row.emitted or row.finish_reason is not None:
            delta = row.text[row.emitted : safe]
            row.emitted = max(row.emitted, safe)
            if self.on_delta is not None:
                self.on_delta(i, delta, [token], row.finish_reason)
        elif self.on_delta is not None:
            self.on_delta(i, "", [token], None)

    def end(self) -> None:
        for i, row in enumerate(self.rows):
            if row.finish_reason is None:
                row.finish_reason = "length"
                if self.on_delta is not None:
                    self.on_delta(i, row.text[row.emitted :], [], "length")
                row.emitted = len(row.text)
