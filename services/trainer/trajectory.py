"""One multi-round zoom episode as the exact token sequence the learner trains on, and the
images it needs to rebuild the pixel values: what a rollout worker turns a ``LoopOutcome``
into (``RolloutResult.segments`` and ``.image_refs``, or the legacy inline ``.images``).

Round k of the zoom loop sends a prompt P_k (the whole conversation so far, rendered by the
chat template and tokenised by the processor) and samples a completion C_k. The sequence is::

    P_1 (mask 0) + C_1 (mask 1) + O_1 (mask 0) + C_2 (mask 1) + ... + C_n (mask 1)

where O_k is the tail of P_{k+1} after assistant turn k: the template's end of that turn, the
tool/observation message with its crops, and the next generation prompt. The mask-1 parts
are the ids the sampler drew, with its log-probs, never a re-tokenisation of their text.

How this differs from TRL and from re-rendering the final conversation:
- TRL's multi-turn GRPO re-tokenises the final conversation and masks the tool turns. That
  trains on ids the model may never have produced: BPE can tokenise the decoded text
  differently from the sampled ids (and ``skip_special_tokens`` drops any special token the
  model emitted). Here the sampled ids are kept, so the policy gradient is of the sampled
  action.
- The price: the model's *context* in round k+1 was P_{k+1}, where turn k is the template's
  re-rendering of C_k's text. When that re-rendering differs from C_k, the learner scores
  C_{k+1} in a slightly different context than the sampler did. The zoom loop puts each
  turn back as the exact text sampled (never rebuilt from parsed tool calls), so the only
  drift left is BPE's: sampled ids that are not the canonical tokenisation of their text.
  ``retokenize_mismatch`` counts the tokens of earlier rounds that differ between the
  sampler's context and the learner's sequence, for every episode (it travels in the
  rollout result and is logged every step); ``retokenized_rounds`` names such rounds.

The end of turn: the sampler stops on an eos, which is then the last sampled id (mask 1, it
was sampled and the model must learn to stop). A completion cut by ``max_tokens``
(finish_reason ``length``) has no eos, but the template still closed the turn with
``<|im_end|>`` in P_{k+1}, so the model saw one: it goes in front of O_k with mask 0. A
completion that stopped on another eos (``<|endoftext|>``) gets the template's
``<|im_end|>`` after it the same way.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from PIL import Image

from magsrl.common.image_blobs import ImageBlobStore
from magsrl.proto.rollout import Segment
from magsrl.proto.stored_image import StoredImage
from magsrl.zoom.engine import GenerationResult, split_images

# P_k ends with the generation prompt "<|im_start|>assistant\n". Re-rendered in P_{k+1}, that
# trailing newline is followed by the turn's text, and BPE may merge the two when the text
# starts with whitespace ("\n\n" is one token): the last token of P_k may differ in P_{k+1}.
GENERATION_PROMPT_SLACK = 1
# Lossless, and fast to write: pixels round-trip exactly at any level; 1 trades some size for
# speed, since workers encode every crop of every rollout.
PNG_COMPRESS_LEVEL = 1
# Stored images (the shared store, not Redis): no deflate. At 0.25 MP that decodes in 4.4 ms
# instead of 9.8 and encodes in 11 instead of 27, for 30% more bytes on the volume; the
# learner decodes every crop of every rollout (bench/rollout_data.py).
STORE_PNG_COMPRESS_LEVEL = 0


def _round(result: GenerationResult, k: int) -> tuple[list[int], list[int], list[float]]:
    if result.prompt_token_ids is None:
        raise ValueError(
            f"round {k + 1} has no prompt_token_ids: the engine must return the prompt's ids "
            "(the hf engine does; an upstream engine needs return_token_ids)"
        )
    completion = result.completions[0]
    if completion.logprobs is None:
        raise ValueError(
            f"round {k + 1} has no log-probs: sample with SamplingParams(logprobs=True), the "
            "learner needs the sampler's log-probs of every generated token"
        )
    if len(completion.logprobs) != len(completion.token_ids):
        raise ValueError(
            f"round {k + 1} has {len(completion.token_ids)} token ids but "
            f"{len(completion.logprobs)} log-probs"
        )
    return list(result.prompt_token_ids), list(completion.token_ids), list(completion.logprobs)


def _turn_end(previous: list[int], prompt: list[int], eos_id: int, k: int) -> int:
    """The index in ``prompt`` (P_{k+1}) of the ``eos_id`` that closes assistant turn k."""
    keep = max(0, len(previous) - GENERATION_PROMPT_SLACK)
    if prompt[:keep] != previous[:keep]:
        first = next(
            (i for i, (a, b) in enumerate(zip(previous, prompt, strict=False)) if a != b),
            min(len(previous), len(prompt)),
        )
        raise ValueError(
            f"the prompt of round {k + 2} does not start with the prompt of round {k + 1} "
            f"(they differ at token {first} of {len(previous)}): the chat template rewrites "
            "earlier turns (e.g. drops previous thinking), so the sampled rounds are not one "
            "sequence; use a template that keeps the history verbatim"
        )
    try:
        return prompt.index(eos_id, keep)
    except ValueError:
        raise ValueError(
            f"the prompt of round {k + 2} has no end-of-turn token (id {eos_id}) after round "
            f"{k + 1}'s prompt: is eos_id the template's <|im_end|>?"
        ) from None


def _contexts(results: Sequence[GenerationResult], eos_id: int) -> list[list[int]]:
    """Per round, the mask-0 ids the learner puts before its completion: P_1 for round 1,
    O_{k-1} (with a template <|im_end|> in front where the sampler drew none) after."""
    contexts: list[list[int]] = []
    previous: list[int] = []
    previous_completion: list[int] = []
    for k, result in enumerate(results):
        prompt, ids, _ = _round(result, k)
        if k == 0:
            context = prompt
        else:
            end = _turn_end(previous, prompt, eos_id, k - 1)
            # A turn cut by max_tokens (or ended by another eos): the template's <|im_end|>.
            closed = bool(previous_completion) and previous_completion[-1] == eos_id
            context = ([] if closed else [eos_id]) + prompt[end + 1 :]
        contexts.append(context)
        previous, previous_completion = prompt, ids
    return contexts


def segments_from_rounds(results: Sequence[GenerationResult], eos_id: int) -> list[Segment]:
    """The episode's token sequence as segments: the prompt of round 1 and each observation
    (mask 0), and each round's sampled completion (mask 1, with the sampler's log-probs).

    ``results`` are the zoom loop's per-round results (``LoopOutcome.results``); ``eos_id`` is
    the template's end-of-turn token (``<|im_end|>``). Raises ValueError when a later prompt
    does not extend the earlier one, or a round lacks prompt ids or log-probs."""
    if not results:
        raise ValueError("an episode needs at least one round")
    segments: list[Segment] = []
    for k, (result, context) in enumerate(zip(results, _contexts(results, eos_id), strict=True)):
        _, ids, logprobs = _round(result, k)
        if context:
            segments.append(Segment(ids=context, mask=0))
        if ids:
            segments.append(Segment(ids=ids, mask=1, logprobs=logprobs))
    return segments


def retokenize_mismatch(results: Sequence[GenerationResult], eos_id: int) -> int:
    """Tokens of earlier rounds that differ between what the sampler saw and what the learner
    trains on: for each round k+1 > 1, the sampler's context P_{k+1} against the learner's
    sequence up to the same point (P_1 + C_1 + O_1 + ... + C_k + O_k), counted as the longer
    side of the span between their common prefix and common suffix (0 when they are the
    same ids). Zero means every later round was sampled after exactly the learner's history."""
    if not results:
        return 0
    learner: list[int] = []
    total = 0
    for k, (result, context) in enumerate(zip(results, _contexts(results, eos_id), strict=True)):
        prompt, ids, _ = _round(result, k)
        learner.extend(context)
        if k > 0:
            total += _differing(learner, prompt)
        learner.extend(ids)
    return total


def _differing(a: list[int], b: list[int]) -> int:
    prefix = 0
    limit = min(len(a), len(b))
    while prefix < limit and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    return max(len(a), len(b)) - prefix - suffix


def retokenized_rounds(results: Sequence[GenerationResult], eos_id: int) -> list[int]:
    """0-based rounds (all but the last) whose sampled ids the template re-rendered as other
    ids in the next prompt, so that the next round was sampled in a context that differs from
    the learner's sequence (see the module docstring)."""
    out = []
    for k in range(len(results) - 1):
        previous, ids, _ = _round(results[k], k)
        prompt, _, _ = _round(results[k + 1], k + 1)
        end = _turn_end(previous, prompt, eos_id, k)
        sampled = ids[:-1] if ids and ids[-1] == eos_id else ids
        if prompt[len(previous) - GENERATION_PROMPT_SLACK : end] != (
            previous[len(previous) - GENERATION_PROMPT_SLACK :] + sampled
        ):
            out.append(k)
    return out


def sequence_ids(segments: Sequence[Segment]) -> list[int]:
    """The whole episode's ids, segments concatenated."""
    return [i for segment in segments for i in segment.ids]


def images_from_messages(messages: list[dict[str, Any]]) -> list[Image.Image]:
    """Every image of an engine-format conversation (``LoopOutcome.messages``), in order of
    appearance: the order the processor expanded their placeholders in."""
    return split_images(messages)[1]


def encode_png(image: Image.Image, level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """Lossless PNG: the learner's pixels are exactly the policy's. Deterministic, so equal
    pixels give equal bytes, hence one stored file per distinct image."""
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def encode_images(images: Sequence[Image.Image]) -> list[str]:
    """Base64 PNGs, inline (the legacy result format; a worker without an image store)."""
    return [base64.b64encode(encode_png(image)).decode("ascii") for image in images]


class ImageWriter:
    """Puts a rollout's images into the shared store and returns their references.

    The G rollouts of a group share one original: a worker would encode (~0.1 s at 3.5 MP)
    and write it G times. ``keys`` name images known to be equal across jobs (the original:
    the job's image id and the size it was decoded to), and their references are remembered
    here (a bounded LRU), so each worker encodes an original once while the store still has
    it. Blocking (encoding, file writes): call it off the event loop."""

    def __init__(self, store: ImageBlobStore, remember: int = 256) -> None:
        self.store = store
        self.remember = remember
        self._known: OrderedDict[Hashable, StoredImage] = OrderedDict()
        self._lock = threading.Lock()  # the worker's rollouts call refs from several threads

    def refs(
        self, images: Sequence[Image.Image], keys: Sequence[Hashable | None] = ()
    ) -> list[StoredImage]:
        out = []
        for k, image in enumerate(images):
            key = keys[k] if k < len(keys) else None
            with self._lock:
                known = self._known.get(key) if key is not None else None
                if known is not None:
                    self._known.move_to_end(key)
            if known is not None and self.store.exists(known.sha256):
                out.append(known)
                continue
            ref = self.store.put(encode_png(image, STORE_PNG_COMPRESS_LEVEL))
            if key is not None:
                with self._lock:
                    self._known[key] = ref
                    self._known.move_to_end(key)
                    while len(self._known) > self.remember:
                        self._known.popitem(last=False)
            out.append(ref)
        return out


def decode_images(encoded: Sequence[str]) -> list[Image.Image]:
    """The images of ``encode_images``, decoded (mode and pixels as they were encoded)."""
    out = []
    for k, data in enumerate(encoded):
        try:
            image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
            image.load()
        except Exception as exc:  # a corrupt result must name which image failed
            raise ValueError(f"image {k} of the rollout is not a base64 image: {exc}") from exc
        out.append(image)
    return out
