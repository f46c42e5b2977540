"""``POST /answer``: resolve the image, run the zoom loop, and shape the response."""

from __future__ import annotations

import time

import httpx

from magsrl.clients.magnifier import MagnifierClient, MagnifierUnavailable
from magsrl.common.errors import NotFound, ServiceUnavailable
from magsrl.common.image_source import inline_or_url_bytes
from magsrl.common.images import decode_reduced
from magsrl.policy.config import PolicySettings
from magsrl.proto.policy import AnswerRequest, AnswerResponse
from magsrl.zoom.engine import Engine, SamplingParams
from magsrl.zoom.loop import LoopOptions, ZoomLoop


class AnswerService:
    def __init__(
        self,
        engine: Engine,
        loop: ZoomLoop,
        magnifier: MagnifierClient,
        http: httpx.AsyncClient,
        settings: PolicySettings,
    ) -> None:
        self.engine = engine
        self.loop = loop
        self.magnifier = magnifier
        self.http = http
        self.settings = settings

    async def _image_bytes(self, req: AnswerRequest) -> tuple[bytes, str | None]:
        """The image bytes, and its magnifier id when the magnifier already holds it."""
        ref = req.image
        data = await inline_or_url_bytes(
            ref,
            self.http,
            allowlist=self.settings.url_allowlist,
            max_bytes=self.settings.max_body_bytes,
        )
        if data is not None:
            return data, None
        assert ref.id is not None
        try:
            data = await self.magnifier.get_image(ref.id)
        except MagnifierUnavailable as exc:
            raise ServiceUnavailable(
                f"image ids live in the magnifier, which is unavailable: {exc}"
            ) from exc
        if data is None:
            raise NotFound(
                f"unknown image id {ref.id}: upload it to the magnifier "
                "(POST /v1/images) or send the image itself",
                param="image.id",
            )
        return data, ref.id

    def options_for(self, req: AnswerRequest) -> LoopOptions:
        s = self.settings
        return LoopOptions(
            zoom=req.zoom,
            upscale=req.upscale,
            max_rounds=req.max_rounds,
            protocol=s.zoom_protocol,
            crop_in=s.crop_in,
            magnifier_down=s.magnifier_down,
            crop_max_pixels=s.crop_max_pixels,
            crop_format=s.crop_format,
            crop_quality=s.crop_quality,
            max_zooms_per_round=s.max_zooms_per_round,
            max_images=s.max_images,
            model=req.model,
            return_crops=req.return_crops,
            sampling=SamplingParams(
                max_tokens=req.max_tokens, temperature=req.temperature, seed=req.seed
            ),
        )

    async def answer(self, req: AnswerRequest) -> AnswerResponse:
        started = time.perf_counter()
        self.engine.check_model(req.model)
        data, image_id = await self._image_bytes(req)
        # Decoded straight to the model's view: the magnifier crops from the bytes.
        image, original = decode_reduced(
            data,
            max_pixels=self.settings.max_image_pixels,
            target=self.engine.frame_size,
            param="image",
        )
        outcome = await self.loop.run(
            image,
            data,
            image_id,
            req.question,
            req.options,
            self.options_for(req),
            original_size=original,
        )
        total = (time.perf_counter() - started) * 1000
        return AnswerResponse(
            answer=outcome.answer,
            raw_answer=outcome.raw_answer,
            rounds=outcome.rounds,
            model=req.model or self.engine.base_model,
            usage=outcome.usage,
            zoom_skipped=outcome.zoom_skipped,
            timing_ms={
                "total": round(total, 3),
                "model": round(outcome.engine_ms, 3),
                "magnifier": round(outcome.magnifier_ms, 3),
                "overhead": round(total - outcome.engine_ms - outcome.magnifier_ms, 3),
            },
        )
