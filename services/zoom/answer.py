"""One ``/answer`` episode from image bytes to ``AnswerResponse``: decode the image to the
model's view (the one decode path, EXIF-oriented), run the zoom loop with the request's
options over what the policy serves, and shape the response. The policy's ``/answer`` and
eval's client-side OpenAI backend both call this, so they cannot drift apart."""

from __future__ import annotations

import asyncio
import time

from magsrl.common.images import decode_reduced
from magsrl.proto.episode import ServedOptions
from magsrl.proto.policy import AnswerRequest, AnswerResponse
from magsrl.zoom.families import checked_frame
from magsrl.zoom.loop import LoopOptions, LoopOutcome, ZoomLoop


def answer_options(
    request: AnswerRequest, served: ServedOptions, *, max_images: int | None = None
) -> LoopOptions:
    """The loop's options for ``request``: its own choices, the policy's for the rest;
    ``max_images`` is the engine's images-per-prompt limit."""
    return LoopOptions.from_episode(
        request.episode_options(),
        served,
        model=request.model,
        return_crops=request.return_crops,
        max_images=max_images,
    )


async def answer_episode(
    loop: ZoomLoop,
    request: AnswerRequest,
    data: bytes,
    image_id: str | None,
    served: ServedOptions,
    *,
    max_image_pixels: int,
    max_images: int | None = None,
) -> AnswerResponse:
    """Answers ``request`` about the image ``data`` (already in the magnifier as
    ``image_id`` when that is set)."""
    started = time.perf_counter()
    engine = loop.engine
    engine.check_model(request.model)
    # Decoded straight to the model's view: the magnifier crops from the bytes.
    # In a thread: a multi-megapixel decode would stall the event loop (issue 15).
    image, original = await asyncio.to_thread(
        decode_reduced,
        data,
        max_pixels=max_image_pixels,
        target=checked_frame(engine.frame_size),
        param="image",
    )
    outcome = await loop.run(
        image,
        data,
        image_id,
        request.question,
        request.options,
        answer_options(request, served, max_images=max_images),
        original_size=original,
    )
    total = (time.perf_counter() - started) * 1000
    return AnswerResponse(
        answer=outcome.answer,
        raw_answer=outcome.raw_answer,
        rounds=outcome.rounds,
        model=request.model or engine.base_model,
        usage=outcome.usage,
        zoom_skipped=outcome.zoom_skipped,
        timing_ms=split_timing(total, outcome),
    )


def split_timing(total: float, outcome: LoopOutcome) -> dict[str, float]:
    """``total`` split into model, magnifier, queue (when the engine knows it) and the
    rest. Queue wait used to land in "overhead", which then read as the policy's own cost
    while an eval shared the engine."""
    queue = outcome.queue_ms or 0.0
    timing = {
        "total": round(total, 3),
        "model": round(outcome.engine_ms, 3),
        "magnifier": round(outcome.magnifier_ms, 3),
    }
    if outcome.queue_ms is not None:
        timing["queue"] = round(queue, 3)
    timing["overhead"] = round(total - outcome.engine_ms - outcome.magnifier_ms - queue, 3)
    return timing
