"""One real GRPO learner step on peer-format episodes: a DeepEyes episode and a Mini-o3
episode, each zooming into an earlier observation (DeepEyes' multi-turn calls with
``img_idx``, Mini-o3's ``source: observation_1``), run through the real zoom loop on the
tiny Qwen2.5-VL (its real chat template, tokenizer and processor build every prompt; the
script stands in for sampling, ``tests/test_rerender.py``'s engine), turned into rollout
results as the worker does (``segments_from_rounds``, ``images_from_messages``), and
trained on by the real ``Learner``.

Until now the peers' formats went through a rollout but never through a learner step.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from magsrl.engines import hf_generate
from magsrl.policy.config import PolicySettings
from magsrl.proto.rollout import RolloutResult
from magsrl.trainer.learner import Learner
from magsrl.trainer.run_config import RunConfig
from magsrl.trainer.trajectory import (
    decode_images,
    encode_images,
    images_from_messages,
    retokenize_mismatch,
    segments_from_rounds,
)
from magsrl.zoom.engine import SamplingParams
from magsrl.zoom.loop import LoopOptions, LoopOutcome, ZoomLoop
from tests.test_rerender import LocalMagnifier, ScriptedEngine, Turn

CROP_SIDE = 56  # LocalMagnifier's crops are 56x56

DEEPEYES = [
    '<think>The sign is small.</think>\n<tool_call>\n{"name": "image_zoom_in_tool", '
    '"arguments": {"bbox_2d": [56, 28, 168, 140], "label": "the sign"}}\n</tool_call>',
    '<think>Its corner, inside that crop.</think>\n<tool_call>\n{"name": '
    '"image_zoom_in_tool", "arguments": {"bbox_2d": [0, 0, 28, 28], "img_idx": 1}}'
    "\n</tool_call>",
    "<think>It is red.</think>  <answer>red</answer>",
]
MINI_O3 = [
    '<think>Look closer.</think> <grounding>{"bbox_2d": [0.25, 0.25, 0.75, 0.75], '
    '"source": "original_image"}</grounding>',
    '<think>Closer still.</think> <grounding>{"bbox_2d": [0.5, 0.5, 1.0, 1.0], '
    '"source": "observation_1"}</grounding>',
    "<think>It is red.</think><answer>red</answer>",
]
# The tokens the learner must not train on: the peer's feedback layout.
FEEDBACK = {"deepeyes": "<tool_response>", "mini_o3": "(Observation 2)"}


class RecordingEngine(ScriptedEngine):
    """The scripted hf engine, keeping the images of every prompt it was given."""

    def __init__(self, settings: Any, turns: list[Turn]) -> None:
        super().__init__(settings, turns)
        self.images: list[list[Image.Image]] = []

    def _run_chunk(self, chunk: list[Any]) -> list[Any]:
        assert self.lm is not None
        for pending in chunk:
            self.images.append(list(hf_generate.prompt_text(self.lm, pending)[1]))
        return super()._run_chunk(chunk)


def picture() -> tuple[Image.Image, bytes]:
    """224x168 (sides multiples of 28: DeepEyes' resized frame is the image) of random
    pixels, so every crop differs from every other and from the original."""
    pixels = np.random.default_rng(0).integers(0, 256, (168, 224, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return image, buf.getvalue()


async def _episode(model: Path, protocol: str, script: list[str]) -> tuple[Any, LoopOutcome]:
    settings = PolicySettings(policy_model=str(model)).engine_settings()  # type: ignore[call-arg]
    engine = RecordingEngine(settings, [Turn(t) for t in script])
    await engine.start()
    try:
        loop = ZoomLoop(engine, LocalMagnifier())  # type: ignore[arg-type]
        image, data = picture()
        opts = LoopOptions(
            protocol=protocol,  # type: ignore[arg-type]
            upscale="crop",
            sampling=SamplingParams(temperature=1.0, seed=3, logprobs=True),
        )
        outcome = await loop.run(image, data, None, "What colour is the sign?", None, opts)
        return engine, outcome
    finally:
        await engine.close()


def result_of(outcome: LoopOutcome, eos: int, k: int) -> RolloutResult:
    """What the worker's run_job builds from an episode (services/trainer/worker.py)."""
    segments = segments_from_rounds(outcome.results, eos)
    completions = [r.completions[0] for r in outcome.results]
    return RolloutResult(
        job_id=f"peers:0:0:{k}",
        run_id="peers",
        step=0,
        sample_index=k,
        group_index=0,
        version=0,
        policy_model=None,
        worker="test",
        segments=segments,
        images=encode_images(images_from_messages(outcome.messages)),
        reward=1.0,
        components={},
        answer=outcome.answer,
        correct=True,
        zooms=2,
        zoom_errors=outcome.zoom_errors,
        rounds=len(outcome.rounds),
        completion_tokens=sum(len(c.token_ids) for c in completions),
        elapsed_ms=0.0,
    )


def runs(mask: list[float], ids: list[int]) -> list[list[int]]:
    """The ids of each contiguous stretch of mask 1."""
    out: list[list[int]] = []
    for t, (m, i) in enumerate(zip(mask, ids, strict=True)):
        if m:
            if t == 0 or not mask[t - 1]:
                out.append([])
            out[-1].append(i)
    return out


@pytest.mark.slow  # loads the tiny model twice and takes an optimizer step (~10 s)
def test_a_learner_step_trains_on_peer_episodes(tiny_model_dir: Path) -> None:
    """Pins peer formats reaching the learner (before: a rollout only, never a step): the
    DeepEyes and Mini-o3 episodes, each zooming into its first crop, collate and train
    with a finite loss; the tokens trained on (mask 1) are exactly the model's sampled
    turns, each with its end of turn, and none of the peer's feedback (tool responses,
    observation prompts); and the learner sees the images the episode's last prompt saw,
    original then crops in order, pixel for pixel."""
    episodes = {
        "deepeyes": asyncio.run(_episode(tiny_model_dir, "deepeyes", DEEPEYES)),
        "mini_o3": asyncio.run(_episode(tiny_model_dir, "mini_o3", MINI_O3)),
    }
    config = RunConfig.model_validate(
        {
            "name": "peers",
            "model": "tiny",
            "dataset": "unused",
            "grpo": {"group_size": 2, "prompts_per_step": 1, "micro_batch_size": 2},
            "lora": {"dropout": 0.0},
        }
    )
    learner = Learner(tiny_model_dir, config, device="cpu")
    tokenizer = learner.processor.tokenizer
    eos = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    results = []
    for k, (_, outcome) in enumerate(episodes.values()):
        assert outcome.answer == "red" and len(outcome.rounds) == 3
        assert [z.img_idx for r in outcome.rounds for z in r.zooms] == [0, 1]
        assert retokenize_mismatch(outcome.results, eos) == 0
        results.append(result_of(outcome, eos, k))

    batch = learner.collate(results)
    original, _ = picture()
    for b, (protocol, (engine, outcome)) in enumerate(episodes.items()):
        script = DEEPEYES if protocol == "deepeyes" else MINI_O3
        mask = batch.completion_mask[b].tolist()
        ids = batch.input_ids[b].tolist()
        sampled = [[*tokenizer.encode(t, add_special_tokens=False), eos] for t in script]
        assert runs(mask, ids) == sampled
        unmasked = tokenizer.decode([i for m, i in zip(mask, ids, strict=True) if not m])
        assert FEEDBACK[protocol] in unmasked
        assert all(FEEDBACK[protocol] not in tokenizer.decode(s) for s in sampled)

        # The learner's images: the last prompt's, original then the two crops, in order.
        seen = engine.images[-1]
        learned = decode_images(results[b].images)
        assert len(seen) == len(learned) == 3
        for a, c in zip(seen, learned, strict=True):
            assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(c.convert("RGB")))
        assert np.array_equal(np.asarray(learned[0]), np.asarray(original))
        boxes = [z.box for r in outcome.rounds for z in r.zooms]
        for crop, box in zip(learned[1:], boxes, strict=True):
            expected = original.crop(tuple(box)).resize((CROP_SIDE, CROP_SIDE))
            assert np.array_equal(np.asarray(crop), np.asarray(expected)), box
    # The batch's pixels are the processor's on those images, in that order.
    every = [i for r in results for i in decode_images(r.images)]
    processed = learner.processor.image_processor(images=every, return_tensors="pt")
    assert batch.pixel_values is not None and batch.image_grid_thw is not None
    assert torch.equal(batch.pixel_values, processed["pixel_values"])
    assert torch.equal(batch.image_grid_thw, processed["image_grid_thw"])

    before = {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    metrics = learner.step(results, torch.tensor([1.0, -1.0]))
    assert (
        metrics["tokens"]
        == batch.completion_tokens
        == sum(len(s.ids) for r in results for s in r.segments if s.mask)
    )
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
    after = dict(learner.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
