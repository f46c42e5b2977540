"""Zero re-render drift: what the zoom loop puts back into the history is the text the model
sampled, so round 2 is sampled after exactly the sequence the learner trains on.

The engine here is the real hf engine on the tiny model (its real chat template, tokenizer
and processor build every prompt) whose sampling is replaced by a script: each round
"samples" the canonical token ids of a scripted text, so any difference between the
sampler's context and the learner's sequence comes from magsrl's re-rendering, which is
what ``retokenize_mismatch`` measures and these tests pin at 0. The magnifier is an
in-process stand-in (crops with PIL): it is not what is tested here.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from magsrl.engines import hf_generate
from magsrl.engines.hf import HFEngine
from magsrl.engines.openai_upstream import _completion
from magsrl.policy.config import PolicySettings
from magsrl.proto.magnifier import Crop, ImageInfo, ZoomResponse
from magsrl.trainer.trajectory import retokenize_mismatch, segments_from_rounds
from magsrl.zoom.engine import Completion, GenerationResult, SamplingParams
from magsrl.zoom.loop import LoopOptions, ZoomLoop, round_sampling

ANSWER = "<rethink>it is red</rethink><answer>red</answer>"


def call(box: list[int], label: str | None = None, img_idx: int | None = None) -> str:
    """A Hermes tool call as a model writes it: integer boxes, its own key order."""
    arguments: dict[str, Any] = {"bbox_2d": box}
    if label is not None:
        arguments["label"] = label
    if img_idx is not None:
        arguments["img_idx"] = img_idx
    return "<tool_call>\n" + json.dumps({"name": "zoom", "arguments": arguments}) + "\n</tool_call>"


@dataclass(frozen=True)
class Turn:
    text: str
    cut: bool = False  # ended by max_tokens: no <|im_end|> sampled


class ScriptedEngine(HFEngine):
    """The hf engine with a script in place of ``generate``: prompts are rendered and
    tokenised exactly as the hf engine does; completions are the script's canonical ids."""

    def __init__(self, settings: PolicySettings, turns: list[Turn]) -> None:
        super().__init__(settings)
        self.turns = list(turns)
        self.prompts: list[list[int]] = []

    def _run_chunk(self, chunk: list[Any]) -> list[GenerationResult]:
        assert self.lm is not None
        results = []
        for pending in chunk:
            text, images = hf_generate.prompt_text(self.lm, pending)
            inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
            prompt = inputs["input_ids"][0].tolist()
            turn = self.turns.pop(0)
            ids = self.tokenizer.encode(turn.text, add_special_tokens=False)
            if not turn.cut:
                ids.append(self.lm.eos_ids[0])
            self.prompts.append(prompt)
            results.append(
                GenerationResult(
                    completions=[
                        Completion(
                            text=turn.text,
                            token_ids=ids,
                            finish_reason="length" if turn.cut else "stop",
                            logprobs=[0.0] * len(ids),
                        )
                    ],
                    prompt_token_ids=prompt,
                    prompt_tokens=len(prompt),
                    engine_ms=0.0,
                    model=self.base_model,
                )
            )
        return results


class LocalMagnifier:
    """Just enough of MagnifierClient: plain crops of the uploaded image, as PNG."""

    def __init__(self) -> None:
        self.images: dict[str, bytes] = {}

    async def upload(self, data: bytes) -> ImageInfo:
        image_id = hashlib.sha256(data).hexdigest()
        self.images[image_id] = data
        width, height = Image.open(io.BytesIO(data)).size
        return ImageInfo(image_id=image_id, width=width, height=height)

    async def zoom(self, image_id: str, boxes: list[Any], **_: Any) -> ZoomResponse:
        image = Image.open(io.BytesIO(self.images[image_id])).convert("RGB")
        crops = []
        for box in boxes:
            crop = image.crop(tuple(box)).resize((56, 56))
            buf = io.BytesIO()
            crop.save(buf, "PNG")
            crops.append(
                Crop(
                    box=list(box),
                    width=56,
                    height=56,
                    method="crop",
                    model=None,
                    scale=1.0,
                    format="png",
                    b64=base64.b64encode(buf.getvalue()).decode(),
                )
            )
        return ZoomResponse(image_id=image_id, crops=crops, timing_ms={})


def picture() -> tuple[Image.Image, bytes]:
    image = Image.new("RGB", (224, 168), (200, 30, 30))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return image, buf.getvalue()


async def _episode(model: Path, protocol: str, turns: list[Turn], max_images: int | None = None):
    engine = ScriptedEngine(PolicySettings(policy_model=str(model)).engine_settings(), turns)  # type: ignore[call-arg]
    await engine.start()
    try:
        loop = ZoomLoop(engine, LocalMagnifier())  # type: ignore[arg-type]
        image, data = picture()
        opts = LoopOptions(
            protocol=protocol,  # type: ignore[arg-type]
            max_rounds=len(turns),
            upscale="crop",
            sampling=SamplingParams(temperature=1.0, seed=7, logprobs=True),
            max_images=max_images,
        )
        outcome = await loop.run(image, data, None, "What colour is it?", None, opts)
        assert engine.lm is not None
        eos = engine.lm.eos_ids[0]
        return engine, outcome, eos
    finally:
        await engine.close()


TAGS_ONE = "<think>small<zoom>[[10, 20, 110, 80]]</zoom></think>"
TAGS_TWO = "<think>two places<zoom>[[10,20,110,80],[0, 0, 50, 50]]</zoom> then more</think>"
TOOLS_ONE = "<think>small</think>\n" + call([10, 20, 110, 80], "sign")
TOOLS_TWO_JOINED = call([10, 20, 110, 80]) + call([0, 0, 50, 50], img_idx=0)
TOOLS_TWO_LINES = "Looking closer.\n" + call([10, 20, 110, 80]) + "\n" + call([0, 0, 50, 50])
TOOLS_TEXT_AFTER = call([10, 20, 110, 80], "sign") + "\nI will wait for the crop."
TOOLS_UNCLOSED = "<think>cut</think>\n<tool_call>\n" + json.dumps(
    {"name": "zoom", "arguments": {"bbox_2d": [10, 20, 110, 80]}}
)

CASES = [
    pytest.param("tags", [Turn(TAGS_ONE), Turn(ANSWER)], 1, id="tags-one"),
    pytest.param("tags", [Turn(TAGS_TWO), Turn(ANSWER)], 2, id="tags-two"),
    pytest.param("tools", [Turn(TOOLS_ONE), Turn(ANSWER)], 1, id="tools-one"),
    pytest.param("tools", [Turn(TOOLS_TWO_JOINED), Turn(ANSWER)], 2, id="tools-two-joined"),
    pytest.param("tools", [Turn(TOOLS_TWO_LINES), Turn(ANSWER)], 2, id="tools-two-lines"),
    pytest.param("tools", [Turn(TOOLS_TEXT_AFTER), Turn(ANSWER)], 1, id="tools-text-after"),
    pytest.param("tools", [Turn(TOOLS_UNCLOSED), Turn(ANSWER)], 1, id="tools-unclosed-at-eos"),
    pytest.param(
        "tools", [Turn(TOOLS_UNCLOSED, cut=True), Turn(ANSWER)], 1, id="tools-cut-by-max-tokens"
    ),
    pytest.param(
        "tools",
        [Turn(TOOLS_ONE), Turn(TOOLS_TWO_LINES), Turn(ANSWER)],
        3,
        id="tools-three-rounds",
    ),
]


@pytest.mark.parametrize(("protocol", "turns", "crops"), CASES)
def test_history_is_what_was_sampled(
    tiny_model_dir: Path, protocol: str, turns: list[Turn], crops: int
) -> None:
    """Bug: the tools protocol rebuilt the assistant turn from parsed calls (arguments
    re-serialised as floats with img_idx added, several calls joined without a newline, the
    text after a call dropped), and an unclosed call at the end of generation was refused,
    so round 2 was sampled after a history the model never produced; the learner then
    scored it in another context. Now every earlier turn goes back verbatim and the
    sampler's context equals the learner's sequence: retokenize_mismatch is 0."""
    _, outcome, eos = asyncio.run(_episode(tiny_model_dir, protocol, turns))
    assert len(outcome.results) == len(turns)
    made = [z for r in outcome.rounds for z in r.zooms if z.error is None]
    assert len(made) == crops
    assistant = [m["content"] for m in outcome.messages if m["role"] == "assistant"]
    assert assistant == [t.text for t in turns[:-1]]
    assert retokenize_mismatch(outcome.results, eos) == 0
    # The learner's whole sequence is the last prompt followed by the last completion.
    segments = segments_from_rounds(outcome.results, eos)
    learner = [i for s in segments for i in s.ids]
    last = outcome.results[-1]
    assert learner == list(last.prompt_token_ids or []) + last.completions[0].token_ids


def test_mismatch_counts_a_rewritten_turn(tiny_model_dir: Path) -> None:
    """The metric can fail: a history whose assistant turn was re-serialised (what the tools
    protocol did before) shows as differing tokens."""
    engine, outcome, eos = asyncio.run(
        _episode(tiny_model_dir, "tools", [Turn(TOOLS_ONE), Turn(ANSWER)])
    )
    first, second = outcome.results
    rebuilt = TOOLS_ONE.replace("[10, 20, 110, 80]", "[10.0, 20.0, 110.0, 80.0]")
    tok = engine.tokenizer
    sampled = tok.encode(TOOLS_ONE, add_special_tokens=False)
    other = tok.encode(rebuilt, add_special_tokens=False)
    start = len(first.prompt_token_ids or [])
    prompt = list(second.prompt_token_ids or [])
    assert prompt[start : start + len(sampled)] == sampled
    drifted = prompt[:start] + other + prompt[start + len(sampled) :]
    second.prompt_token_ids = drifted
    assert retokenize_mismatch(outcome.results, eos) >= abs(len(other) - len(sampled)) > 0


def test_each_round_has_its_own_seed() -> None:
    """Bug: every round of an episode was sampled with the episode's seed, so round 2 replayed
    round 1's random stream. Round 1 keeps the seed; later rounds get derived, distinct ones,
    the same on every run."""
    opts = LoopOptions(sampling=SamplingParams(seed=1234))
    seeds = [round_sampling(opts, k).seed for k in range(4)]
    assert seeds[0] == 1234
    assert len(set(seeds)) == 4
    assert seeds == [round_sampling(opts, k).seed for k in range(4)]
    assert round_sampling(LoopOptions(sampling=SamplingParams(seed=None)), 2).seed is None


def test_images_limit_stops_zooming_with_a_reason(tiny_model_dir: Path) -> None:
    """Bug: crops accumulated past the engine's images-per-prompt limit (MAGSRL_MAX_IMAGES=5
    with max_rounds up to 8), and vLLM answered 400 mid-episode. Now a crop that would pass
    the limit is not made, and the model is told why."""
    turns = [Turn(TOOLS_TWO_LINES), Turn(TOOLS_TWO_LINES), Turn(ANSWER)]
    _, outcome, eos = asyncio.run(_episode(tiny_model_dir, "tools", turns, max_images=4))
    images = [p for m in outcome.messages if isinstance(m["content"], list) for p in m["content"]]
    assert sum(1 for p in images if p.get("type") == "image") == 4
    skipped = [z for r in outcome.rounds for z in r.zooms if z.error and "not magnified" in z.error]
    assert len(skipped) == 1 and "(4," in skipped[0].error
    assert retokenize_mismatch(outcome.results, eos) == 0


def test_openai_engine_keeps_the_sampled_turn() -> None:
    """Bug: the openai engine rebuilt a tool-call turn from the upstream's parsed tool_calls
    (vLLM's hermes parser keeps only the content before the first call), re-serialising its
    arguments. With log-probs, each token's bytes give back the sampled text exactly."""
    sampled = "Looking.\n" + call([10, 20, 110, 80]) + "\nthen " + call([1, 2, 3, 4])
    pieces = [sampled[i : i + 3] for i in range(0, len(sampled), 3)] + ["<|im_end|>"]
    choice = {
        "message": {
            "content": "Looking.",
            "tool_calls": [
                {"function": {"name": "zoom", "arguments": '{"bbox_2d": [10, 20, 110, 80]}'}},
                {"function": {"name": "zoom", "arguments": '{"bbox_2d": [1, 2, 3, 4]}'}},
            ],
        },
        "logprobs": {
            "content": [{"token": p, "logprob": -0.1, "bytes": list(p.encode())} for p in pieces]
        },
        "token_ids": list(range(len(pieces))),
        "finish_reason": "tool_calls",
    }
    assert _completion(choice).text == sampled
