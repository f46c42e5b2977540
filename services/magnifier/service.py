"""The magnifier's logic, free of HTTP: keep images, resolve references, and turn boxes into
encoded crops through the sizing plan and the SR engine."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
from PIL import Image
from prometheus_client import CollectorRegistry, Counter

from magsrl.common.coords import BoxError, Convention, check_box, to_crop_box, to_norm
from magsrl.common.errors import NotFound, PayloadTooLarge, ServiceUnavailable, UnprocessableEntity
from magsrl.common.image_blobs import open_image_store, store_dir
from magsrl.common.image_source import inline_or_url_bytes
from magsrl.common.images import decode_image, encode_image, sha256_hex, to_b64
from magsrl.magnifier.config import MagnifierSettings
from magsrl.magnifier.engine import BackendUnavailable, SREngine
from magsrl.magnifier.image_store import ImageStore, SharedImages
from magsrl.magnifier.sizing import Method, Plan, plan_crop
from magsrl.magnifier.sr.weights import BACKENDS
from magsrl.proto.images import ImageInfo, ImageRef
from magsrl.proto.magnifier import Crop, ZoomRequest, ZoomResponse

BASELINES: tuple[Method, ...] = ("bicubic", "crop")


def _family(name: str) -> str:
    # span-x4 and span-x2 are one family: `sr` may use either, whichever reaches the target.
    return name.rsplit("-x", 1)[0]


class Magnifier:
    def __init__(
        self,
        settings: MagnifierSettings,
        engine: SREngine,
        http: httpx.AsyncClient,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.http = http
        self.store = ImageStore(settings.cache_bytes, registry)
        shared = open_image_store(store_dir(settings.image_store_dir, settings.runs_dir))
        self.images = SharedImages(self.store, shared)
        self.crops_total = Counter(
            "magsrl_crops_total",
            "Crops produced, by method and model.",
            ["method", "model"],
            registry=registry,
        )

    # ---- images ---------------------------------------------------------------------
    async def put_image(self, data: bytes) -> ImageInfo:
        image_id = sha256_hex(data)
        array = await self.images.get(image_id, self._decode_stored)
        if array is None:
            array = await self._decode(data, "image")
            await self.images.put(image_id, data, array)
        height, width = array.shape[:2]
        return ImageInfo(image_id=image_id, width=width, height=height)

    async def _decode(self, data: bytes, param: str) -> np.ndarray:
        # Decoding a 12 MP JPEG takes ~100 ms: off the event loop.
        image = await asyncio.to_thread(
            decode_image, data, max_pixels=self.settings.max_image_pixels, param=param
        )
        return np.asarray(image)

    async def _decode_stored(self, data: bytes) -> np.ndarray:
        return await self._decode(data, "image_id")

    async def get_image_png(self, image_id: str) -> bytes:
        array = await self.images.get(image_id, self._decode_stored)
        if array is None:
            raise NotFound(f"unknown image id {image_id}", param="image_id")
        return await asyncio.to_thread(encode_image, Image.fromarray(array), "png")

    async def resolve(self, ref: ImageRef) -> tuple[str, np.ndarray]:
        if ref.id is not None:
            array = await self.images.get(ref.id, self._decode_stored)
            if array is None:
                raise NotFound(
                    f"unknown image id {ref.id}: it was never uploaded or has been "
                    "evicted; upload it again with POST /v1/images",
                    param="image.id",
                )
            return ref.id, array
        data = await inline_or_url_bytes(
            ref,
            self.http,
            allowlist=self.settings.url_allowlist,
            max_bytes=self.settings.max_body_bytes,
            timeout_s=self.settings.url_timeout_s,
        )
        assert data is not None  # ImageRef holds exactly one of id, b64, url
        param = "image.b64" if ref.b64 is not None else "image.url"
        image_id = sha256_hex(data)
        array = await self.images.get(image_id, self._decode_stored)
        if array is None:
            array = await self._decode(data, param)
            await self.images.put(image_id, data, array)
        return image_id, array

    # ---- methods --------------------------------------------------------------------
    def methods(self) -> list[str]:
        return ["sr", *BASELINES, *self.engine.available()]

    def _networks_for(self, method: str) -> tuple[Method, dict[str, int]]:
        """The plan method and the SR networks it may use, or a 422 naming the choices."""
        if method in BASELINES:
            return method, {}  # type: ignore[return-value]
        name = self.settings.default_backend if method == "sr" else method
        if name not in BACKENDS:
            raise UnprocessableEntity(
                f"unknown method '{method}'; choose one of: {', '.join(self.methods())}",
                param="method",
            )
        reason = self.engine.unavailable_reason(name)
        if reason:
            if method == "sr":
                raise ServiceUnavailable(f"the default SR backend is unavailable: {reason}")
            raise UnprocessableEntity(
                f"method '{method}' is not available here: {reason}", param="method"
            )
        if method != "sr":
            return "sr", {name: BACKENDS[name].scale}
        family = _family(name)
        return "sr", {
            n: s.scale for n, s in self.engine.available().items() if _family(n) == family
        }

    # ---- zoom -----------------------------------------------------------------------
    async def zoom(self, req: ZoomRequest) -> ZoomResponse:
        t0 = time.perf_counter()
        if len(req.boxes) > self.settings.max_boxes:
            raise PayloadTooLarge(
                f"{len(req.boxes)} boxes in one request, over the limit of "
                f"{self.settings.max_boxes} (MAGSRL_MAX_BOXES); split them over several requests",
                param="boxes",
            )
        method, networks = self._networks_for(req.method)
        image_id, array = await self.resolve(req.image)
        height, width = array.shape[:2]
        boxes = []
        for i, raw in enumerate(req.boxes):
            try:
                norm = to_norm(check_box(raw), Convention(req.coords.value), (width, height))
                boxes.append(to_crop_box(norm, (width, height), self.settings.min_box_side))
            except BoxError as exc:
                raise UnprocessableEntity(f"boxes[{i}]: {exc}", param=f"boxes[{i}]") from exc
        t1 = time.perf_counter()
        budget = req.max_pixels or self.settings.max_pixels
        plans = [
            plan_crop(
                x2 - x1,
                y2 - y1,
                method=method,
                networks=networks,
                max_pixels=budget,
                max_scale=self.settings.max_scale,
                min_sr_scale=self.settings.min_sr_scale,
            )
            for x1, y1, x2, y2 in boxes
        ]
        self._check_budget(plans)
        images = await asyncio.gather(
            *[
                self._render(array[y1:y2, x1:x2], plan)
                for (x1, y1, x2, y2), plan in zip(boxes, plans, strict=True)
            ]
        )
        t2 = time.perf_counter()
        encoded = await asyncio.gather(
            *[asyncio.to_thread(encode_image, im, req.format, req.quality) for im in images]
        )
        t3 = time.perf_counter()
        self._check_response_size(encoded)
        crops = []
        for box, plan, image, data in zip(boxes, plans, images, encoded, strict=True):
            self.crops_total.labels(plan.method, plan.backend or "").inc()
            crops.append(
                Crop(
                    box=list(box),
                    width=image.width,
                    height=image.height,
                    method=plan.method,
                    model=plan.backend,
                    scale=round(plan.scale, 4),
                    perceptual=bool(plan.backend and BACKENDS[plan.backend].perceptual),
                    format=req.format,
                    b64=to_b64(data),
                )
            )
        ms = 1000.0
        return ZoomResponse(
            image_id=image_id,
            crops=crops,
            timing_ms={
                "resolve": round((t1 - t0) * ms, 3),
                "upscale": round((t2 - t1) * ms, 3),
                "encode": round((t3 - t2) * ms, 3),
                "total": round((t3 - t0) * ms, 3),
            },
        )

    def _check_budget(self, plans: list[Plan]) -> None:
        """Refuses before any pixel is upscaled: the work and memory of a request follow its
        output pixels."""
        total = sum(p.out_size[0] * p.out_size[1] for p in plans)
        limit = self.settings.max_total_pixels
        if total > limit:
            raise PayloadTooLarge(
                f"the crops would total {total} output pixels, over the per-request budget of "
                f"{limit} (MAGSRL_MAX_TOTAL_PIXELS); ask for fewer boxes or a smaller "
                "max_pixels",
                param="max_pixels",
            )

    def _check_response_size(self, encoded: list[bytes]) -> None:
        # Base64 takes 4 bytes per 3; the JSON around the crops is small next to them.
        size = sum(4 * ((len(data) + 2) // 3) for data in encoded)
        limit = self.settings.max_response_bytes
        if size > limit:
            raise PayloadTooLarge(
                f"the encoded crops total {size} bytes, over the response limit of {limit} "
                "(MAGSRL_MAX_RESPONSE_BYTES); ask for jpeg or webp, fewer boxes or a smaller "
                "max_pixels",
                param="format",
            )

    async def _render(self, region: np.ndarray, plan: Plan) -> Image.Image:
        height, width = region.shape[:2]
        if plan.method == "sr":
            assert plan.backend is not None
            try:
                out = await self.engine.upscale(plan.backend, region)
            except BackendUnavailable as exc:
                raise ServiceUnavailable(str(exc)) from exc
            image = Image.fromarray(out)
            if image.size != plan.out_size:
                # The network overshot the budget (x4 for a 3x target): shrink to fit.
                image = await asyncio.to_thread(image.resize, plan.out_size, Image.LANCZOS)
            return image
        image = Image.fromarray(region)
        if plan.out_size == (width, height):
            return image
        resample = Image.BICUBIC if plan.method == "bicubic" else Image.LANCZOS
        return await asyncio.to_thread(image.resize, plan.out_size, resample)
