"""Teaches a model a scripted two-round trajectory (zoom, then rethink and answer) by
fine-tuning it on the exact messages the zoom loop sends, crops from the real magnifier
included. Tests, benchmarks and demos use it to get a model that really zooms without a
trained checkpoint; nothing in the serving path is replaced."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from magsrl.clients.magnifier import MagnifierClient
from magsrl.common.images import decode_image
from magsrl.engines.hf import HFEngine
from magsrl.models.sft import SFTExample, finetune
from magsrl.policy.config import PolicySettings
from magsrl.policy.serving_answer import AnswerService
from magsrl.proto.policy import AnswerRequest
from magsrl.proto.tools import zoom_tool
from magsrl.zoom.loop import ZoomLoop

DEFAULT_STEPS = 120
CONVERGED_LOSS = 0.05


@dataclass(frozen=True)
class Script:
    image: bytes
    question: str
    round1: str  # the model's first turn, with its zoom request
    round2: str  # its answer once the crops arrive
    protocol: str = "tags"  # tags or tools


async def conversation(
    model_dir: Path, magnifier_url: str, script: Script
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The round-1 messages, and the messages after ``script.round1`` was observed."""
    settings = PolicySettings(
        policy_model=str(model_dir), magnifier_url=magnifier_url, zoom_protocol=script.protocol
    )  # type: ignore[arg-type]
    engine = HFEngine(settings.engine_settings())
    await engine.start()
    magnifier = MagnifierClient(magnifier_url)
    try:
        async with httpx.AsyncClient() as http:
            loop = ZoomLoop(engine, magnifier)
            service = AnswerService(engine, loop, magnifier, http, settings)
            opts = service.options_for(
                AnswerRequest(image={"b64": "AA=="}, question=script.question)
            )
            image = decode_image(script.image, max_pixels=settings.max_image_pixels)
            episode = loop.start(image, script.image, None, script.question, None, opts)
            first = list(episode.messages)
            if not await loop.observe(episode, script.round1):
                raise ValueError("the scripted round 1 asks for no usable zoom")
            return first, episode.messages
    finally:
        await magnifier.close()
        await engine.close()


def build_scripted_model(
    base: Path, out: Path, magnifier_url: str, script: Script, steps: int = DEFAULT_STEPS
) -> list[float]:
    """Fine-tunes ``base`` into ``out``; returns the losses (the last ones near zero)."""
    tools = [zoom_tool()] if script.protocol == "tools" else None
    first, second = asyncio.run(conversation(base, magnifier_url, script))
    losses = finetune(
        base,
        out,
        [SFTExample(first, script.round1, tools), SFTExample(second, script.round2, tools)],
        steps=steps,
    )
    if max(losses[-2:]) > CONVERGED_LOSS:
        raise RuntimeError(f"the scripted trajectory was not learned: last losses {losses[-4:]}")
    return losses
