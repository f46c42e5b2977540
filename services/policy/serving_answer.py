"""``POST /answer``: resolve the image (inline, URL, or a magnifier id), then run the episode
(``magsrl.zoom.answer``) with this policy's served settings filling the request's gaps."""

from __future__ import annotations

import httpx

from magsrl.clients.magnifier import MagnifierClient, MagnifierUnavailable
from magsrl.common.errors import NotFound, ServiceUnavailable
from magsrl.common.image_source import inline_or_url_bytes
from magsrl.policy.config import PolicySettings
from magsrl.policy.serving_chat import refresh_if_unknown
from magsrl.proto.policy import AnswerRequest, AnswerResponse
from magsrl.zoom.answer import answer_episode, answer_options
from magsrl.zoom.engine import Engine
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
        self.served = settings.served_options()

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
        return answer_options(req, self.served, max_images=self.settings.max_images)

    async def answer(self, req: AnswerRequest) -> AnswerResponse:
        await refresh_if_unknown(self.engine, req.model)
        self.engine.check_model(req.model)
        data, image_id = await self._image_bytes(req)
        return await answer_episode(
            self.loop,
            req,
            data,
            image_id,
            self.served,
            max_image_pixels=self.settings.max_image_pixels,
            max_images=self.settings.max_images,
        )
