"""The trace viewer's side-by-side crops: the image goes to the magnifier once, then the same
boxes come back under each upscaling method, so super-resolution can be judged against
bicubic and the plain cut-out. Plain Python: the route in ``viewer_api`` only renders it."""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx

from magsrl.clients.magnifier import MagnifierClient, MagnifierError, MagnifierUnavailable
from magsrl.common.errors import (
    APIError,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnprocessableEntity,
)
from magsrl.common.image_source import inline_or_url_bytes
from magsrl.policy.config import PolicySettings
from magsrl.proto.magnifier import Crop
from magsrl.proto.viewer import BoxCrops, CropsRequest, CropsResponse, Method, MethodCrop

# How a magnifier refusal reads to the viewer's caller; anything else is their bad request.
_REFUSALS: dict[int, type[APIError]] = {
    404: NotFound,
    413: PayloadTooLarge,
    422: UnprocessableEntity,
}


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def refused(exc: MagnifierError) -> APIError:
    """A magnifier 4xx as the policy's own error, keeping its message and the field at fault
    (the boxes go through in the caller's order, so ``boxes[i]`` still points at theirs)."""
    if exc.status in (401, 403):
        # Our key, not the caller's: the operator must give both services the same one.
        return ServiceUnavailable(
            f"the magnifier refused the policy's credentials ({exc.status}): {exc.message}"
        )
    cls = _REFUSALS.get(exc.status, BadRequest)
    return cls(f"the magnifier refused the request: {exc.message}", param=exc.param)


class CropComparer:
    def __init__(
        self, magnifier: MagnifierClient, http: httpx.AsyncClient, settings: PolicySettings
    ) -> None:
        self.magnifier = magnifier
        self.http = http
        self.settings = settings

    async def compare(self, req: CropsRequest) -> CropsResponse:
        started = time.perf_counter()
        data = await inline_or_url_bytes(
            req.image,
            self.http,
            allowlist=self.settings.url_allowlist,
            max_bytes=self.settings.max_body_bytes,
            timeout_s=self.settings.url_timeout_s,
        )
        timing: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            image_id = req.image.id or await self._upload(data or b"")
            timing["upload"] = _ms(t0)
            by_method: dict[Method, list[Crop]] = {}
            for method in req.methods:
                t0 = time.perf_counter()
                by_method[method], image_id = await self._zoom(image_id, data, req.boxes, method)
                timing[method] = _ms(t0)
        except MagnifierUnavailable as exc:
            raise ServiceUnavailable(
                f"the magnifier is unavailable, so no crops can be made: {exc}"
            ) from exc
        except MagnifierError as exc:
            raise refused(exc) from exc
        timing["total"] = _ms(started)
        return CropsResponse(
            image_id=image_id,
            boxes=_by_box(by_method, req.methods, len(req.boxes)),
            timing_ms=timing,
        )

    async def _upload(self, data: bytes) -> str:
        return (await self.magnifier.upload(data)).image_id

    async def _zoom(
        self,
        image_id: str,
        data: bytes | None,
        boxes: Sequence[Sequence[float]],
        method: Method,
    ) -> tuple[list[Crop], str]:
        """The crops, and the image id (new when the magnifier had evicted the image and it
        was sent again)."""

        async def zoom(current: str) -> list[Crop]:
            response = await self.magnifier.zoom(
                current,
                boxes,
                coords="pixel",
                method=method,
                max_pixels=self.settings.crop_max_pixels,
                fmt=self.settings.viewer_crop_format,
                quality=self.settings.crop_quality,
            )
            return response.crops

        try:
            return await zoom(image_id), image_id
        except MagnifierError as exc:
            if exc.status != 404 or data is None:
                raise
        # Evicted from the magnifier's bounded cache between calls: send it once more.
        image_id = await self._upload(data)
        return await zoom(image_id), image_id


def _by_box(
    by_method: dict[Method, list[Crop]], methods: Sequence[Method], n: int
) -> list[BoxCrops]:
    """Regroups the magnifier's per-method answers into one entry per box."""
    out = []
    for i in range(n):
        crops = [by_method[m][i] for m in methods]
        out.append(
            BoxCrops(
                box=crops[0].box,
                crops=[
                    MethodCrop(
                        method=m,
                        model=c.model,
                        width=c.width,
                        height=c.height,
                        format=c.format,
                        b64=c.b64,
                    )
                    for m, c in zip(methods, crops, strict=True)
                ],
            )
        )
    return out
