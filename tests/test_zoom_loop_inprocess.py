"""The zoom loop in-process, in milliseconds: the real ``ZoomLoop`` (prompts, parsing, box
rules, feedback messages) against a scripted engine and a magnifier that crops with PIL.
The real-model, real-process version is test_zoom_loop_e2e.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from PIL import Image

from magsrl.clients.magnifier import MagnifierUnavailable
from magsrl.common.errors import ServiceUnavailable
from magsrl.common.images import encode_image
from magsrl.proto.episode import EpisodeOptions, ServedOptions
from magsrl.zoom.families import QWEN2_5_VL, QWEN3_VL, resized_size
from magsrl.zoom.loop import LoopOptions, LoopOutcome, ZoomLoop
from tests.fakes.episode import FakeMagnifier, ScriptedEngine

IMAGE = Image.new("RGB", (640, 480), (250, 250, 250))


def episode(
    replies: list[str],
    family: Any = QWEN3_VL,
    options: list[str] | None = None,
    magnifier: Any = None,
    **opts: Any,
) -> tuple[LoopOutcome, ScriptedEngine, FakeMagnifier]:
    engine = ScriptedEngine(replies, family)
    magnifier = magnifier or FakeMagnifier()
    loop = ZoomLoop(engine, magnifier)
    data = encode_image(IMAGE, "png")
    outcome = asyncio.run(loop.run(IMAGE, data, None, "What is it?", options, LoopOptions(**opts)))
    return outcome, engine, magnifier


def test_tags_round_zooms_and_answers_with_a_letter() -> None:
    """Pins the two-round tag loop: a 0-1000 box (Qwen3-VL) becomes the pixel crop of the
    original, the crop goes back in a tool message, and the answer becomes the option letter."""
    outcome, engine, magnifier = episode(
        ["<think><zoom>[[0, 0, 500, 500]]</zoom></think>", "<answer>(B) blue</answer>"],
        options=["red", "blue"],
    )
    assert magnifier.calls[0].boxes == [[0, 0, 320, 240]]
    assert outcome.answer == "B" and len(outcome.rounds) == 2
    feedback = engine.requests[1].messages[-1]
    assert feedback["role"] == "tool"
    assert any(p.get("type") == "image" for p in feedback["content"])


def test_qwen25_boxes_are_in_the_processors_frame() -> None:
    """Pins Qwen2.5-VL's convention: absolute pixels of the resized image, scaled back to
    the original."""
    fw, fh = resized_size(640, 480, QWEN2_5_VL)
    outcome, _, magnifier = episode(
        [f"<think><zoom>[[0, 0, {fw // 2}, {fh // 2}]]</zoom></think>", "<answer>x</answer>"],
        family=QWEN2_5_VL,
    )
    assert magnifier.calls[0].boxes == [[0, 0, 320, 240]]
    system = outcome.messages[0]["content"]
    assert f"{fw}" in system and f"{fh}" in system


def test_malformed_zoom_is_a_tool_error_not_an_exception() -> None:
    """Pins a bad box crashing the episode: it is told to the model and counted."""
    outcome, engine, magnifier = episode(
        ["<think><zoom>[[500, 500, 100, 100]]</zoom></think>", "<answer>x</answer>"]
    )
    assert outcome.zoom_errors == 1 and not magnifier.calls
    assert outcome.rounds[0].zooms[0].error
    assert len(engine.requests) == 2


def test_tool_protocol_answers_each_call_by_id() -> None:
    """Pins Hermes tool calls: the assistant turn goes back as sampled (never rebuilt from
    parsed calls), and one tool message per call answers it by id."""
    call = '<tool_call>{"name": "zoom", "arguments": {"bbox_2d": [0, 0, 500, 500]}}</tool_call>'
    _, engine, _ = episode([call, "<answer>x</answer>"], protocol="tools")
    assert engine.requests[0].tools
    assistant, tool = engine.requests[1].messages[-2:]
    assert assistant == {"role": "assistant", "content": call}
    assert tool["role"] == "tool" and tool["tool_call_id"] == "call_0_0"


def test_zoom_off_is_one_round_without_tools() -> None:
    """Pins zoom=off: the direct system prompt and a single round, even if the model zooms."""
    outcome, engine, magnifier = episode(
        ["<think><zoom>[[0, 0, 500, 500]]</zoom></think><answer>x</answer>"], zoom="off"
    )
    assert len(outcome.rounds) == 1 and not magnifier.calls and engine.requests[0].tools is None


def test_max_zooms_per_round_caps_the_requests() -> None:
    """Pins the per-round cap on zooms."""
    boxes = ", ".join(["[0, 0, 500, 500]"] * 5)
    _, _, magnifier = episode(
        [f"<think><zoom>[{boxes}]</zoom></think>", "<answer>x</answer>"], max_zooms_per_round=2
    )
    assert len(magnifier.calls[0].boxes) == 2


class DownMagnifier(FakeMagnifier):
    async def upload(self, data: bytes) -> Any:
        raise MagnifierUnavailable("connection refused")


@pytest.mark.parametrize("mode", ["error", "continue"])
def test_magnifier_down(mode: str) -> None:
    """Pins magnifier_down: a 503, or an answer without zoom that says why."""
    replies = ["<think><zoom>[[0, 0, 500, 500]]</zoom></think>", "<answer>x</answer>"]
    if mode == "error":
        with pytest.raises(ServiceUnavailable):
            episode(replies, magnifier=DownMagnifier(), magnifier_down=mode)
        return
    outcome, _, _ = episode(replies, magnifier=DownMagnifier(), magnifier_down=mode)
    assert outcome.zoom_skipped and outcome.answer == "x"


def test_loop_options_take_the_request_then_the_policy() -> None:
    """Pins the one place options are resolved: a field the request sets wins, an unset
    one takes what the policy serves."""
    served = ServedOptions(protocol="tools", crop_in="user", crop_max_pixels=90_000)
    opts = LoopOptions.from_episode(
        EpisodeOptions(zoom="force", crop_max_pixels=70_000, temperature=0.7, seed=3),
        served,
        model="run-v2",
        logprobs=True,
    )
    assert (opts.zoom, opts.protocol, opts.crop_in, opts.crop_max_pixels) == (
        "force",
        "tools",
        "user",
        70_000,
    )
    assert opts.sampling.temperature == 0.7 and opts.sampling.seed == 3
    assert opts.sampling.logprobs and opts.model == "run-v2"
