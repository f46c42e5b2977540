"""The judge's logic, free of HTTP: resolve the image, pick the method, consult the cache,
score, and combine. Batches run with bounded concurrency and log their progress."""

from __future__ import annotations

import asyncio
import io
import logging
import time
import warnings

import httpx
from PIL import Image
from prometheus_client import CollectorRegistry, Histogram

from magsrl.common.coords import BoxError, to_crop_box
from magsrl.common.errors import APIError, BadRequest, UnprocessableEntity
from magsrl.common.image_source import inline_or_url_bytes
from magsrl.common.images import oriented_size, sha256_hex, to_b64
from magsrl.judge import heuristic
from magsrl.judge.cache import ScoreCache, cache_key
from magsrl.judge.config import JudgeSettings
from magsrl.judge.mllm import MLLMJudge
from magsrl.judge.pass_rate import PassRateJudge
from magsrl.proto.judge import (
    MAX_SCORE,
    MIN_SCORE,
    BatchItemError,
    BatchScoreRequest,
    BatchScoreResponse,
    BatchScoreResult,
    Factors,
    Method,
    ScoreRequest,
    ScoreResponse,
    level_of,
)

log = logging.getLogger("magsrl.judge")
PROGRESS_EVERY = 50
FACTOR_FIELDS = tuple(Factors.model_fields)


def finish(
    raw: float,
    factors: Factors,
    rationale: str,
    method: Method,
    version: str,
    samples: list[float] | None = None,
) -> ScoreResponse:
    raw = min(max(raw, MIN_SCORE), MAX_SCORE)
    score = int(raw + 0.5)  # half up: round() would send 2.5 to 2 and 3.5 to 4
    return ScoreResponse(
        zoom_score=score,
        level=level_of(score),
        factors=factors,
        rationale=rationale,
        method=method,
        raw_score=round(raw, 3),
        version=version,
        samples=samples,
    )


def check_bbox(bbox: list[float], data: bytes) -> None:
    """Refuses a box that misses the image, by the rule the magnifier zooms with
    (``to_crop_box``), so the two services agree on which boxes exist. Reads the header only;
    undecodable bytes are left for the scorer to refuse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # header only
            size = oriented_size(Image.open(io.BytesIO(data)))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return
    width, height = size
    if width <= 0 or height <= 0:
        return
    norm = [bbox[0] / width, bbox[1] / height, bbox[2] / width, bbox[3] / height]
    try:
        to_crop_box(norm, size)
    except BoxError as exc:
        raise UnprocessableEntity(
            f"bbox {bbox}: {exc}; give it in original-image pixels", param="bbox"
        ) from exc


class JudgeService:
    def __init__(
        self,
        settings: JudgeSettings,
        http: httpx.AsyncClient,
        cache: ScoreCache,
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.http = http
        self.cache = cache
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        mllm_key = settings.judge_mllm_api_key
        self.mllm = MLLMJudge(
            http,
            settings.mllm_base_url,
            model=settings.judge_mllm_model,
            api_key=mllm_key.get_secret_value() if mllm_key else api_key,
            samples=settings.judge_mllm_samples,
            temperature=settings.judge_mllm_temperature,
            max_tokens=settings.judge_mllm_max_tokens,
            timeout_s=settings.judge_mllm_timeout_s,
        )
        self.pass_rate = PassRateJudge(
            http,
            settings.policy_url,
            api_key=api_key,
            samples=settings.pass_rate_samples,
            temperature=settings.pass_rate_temperature,
            max_tokens=settings.pass_rate_max_tokens,
            timeout_s=settings.pass_rate_timeout_s,
        )
        self.heuristic_slots = asyncio.Semaphore(settings.heuristic_threads)
        self.seconds = Histogram(
            "magsrl_judge_score_seconds",
            "Time to score one item afresh, by method.",
            ["method"],
            registry=registry,
        )

    async def _image_bytes(self, req: ScoreRequest) -> bytes:
        data = await inline_or_url_bytes(
            req.image,
            self.http,
            allowlist=self.settings.url_allowlist,
            max_bytes=self.settings.max_body_bytes,
            timeout_s=self.settings.url_timeout_s,
        )
        if data is None:
            raise BadRequest(
                "the judge takes the image itself: send image.b64 or image.url "
                "(ids name images held by the magnifier, which the judge does not use)",
                param="image.id",
            )
        return data

    async def score(self, req: ScoreRequest, default: Method | None = None) -> ScoreResponse:
        method: Method = req.method or default or self.settings.judge_method
        data = await self._image_bytes(req)
        if req.bbox is not None:
            check_bbox(req.bbox, data)
        return await self._score_method(method, data, sha256_hex(data), req)

    async def _version(self, method: Method, req: ScoreRequest) -> str:
        if method == "heuristic":
            return heuristic.VERSION
        if method == "mllm":
            return await self.mllm.version()
        if method == "pass_rate":
            return self.pass_rate.version(req.policy_model)
        parts = [
            f"{name}:{weight}:{await self._version(name, req)}"  # type: ignore[arg-type]
            for name, weight in sorted(self.settings.combined_weights.items())
            if weight > 0
        ]
        return "combined(" + ",".join(parts) + ")"

    async def _score_method(
        self, method: Method, data: bytes, digest: str, req: ScoreRequest
    ) -> ScoreResponse:
        version = await self._version(method, req)
        key = cache_key(digest, req, method, version)
        if req.cache:
            hit = await self.cache.get(key, method)
            if hit is not None:
                return hit
        started = time.perf_counter()
        response = await self._compute(method, version, data, digest, req)
        self.seconds.labels(method).observe(time.perf_counter() - started)
        await self.cache.put(key, response)
        return response

    async def _compute(
        self, method: Method, version: str, data: bytes, digest: str, req: ScoreRequest
    ) -> ScoreResponse:
        s = self.settings
        if method == "heuristic":
            async with self.heuristic_slots:
                m = await asyncio.to_thread(
                    heuristic.measure,
                    data,
                    bbox=req.bbox,
                    analysis_pixels=s.heuristic_pixels,
                    max_pixels=s.max_image_pixels,
                )
            return finish(m.raw_score, m.factors, m.rationale, method, version)
        if method == "mllm":
            r = await self.mllm.score(
                data,
                req.question,
                req.answer,
                req.options,
                image_pixels=s.judge_mllm_image_pixels,
                max_image_pixels=s.max_image_pixels,
            )
            return finish(r.score, r.factors, r.rationale, method, version, r.samples)
        if method == "pass_rate":
            p = await self.pass_rate.score(
                to_b64(data), req.question, req.answer, req.options, req.scorer, req.policy_model
            )
            return finish(p.score, Factors(), p.rationale, method, version, p.successes)
        if method == "combined":
            return await self._combined(version, data, digest, req)
        raise BadRequest(f"unknown method {method!r}", param="method")

    async def _combined(
        self, version: str, data: bytes, digest: str, req: ScoreRequest
    ) -> ScoreResponse:
        weights = {m: w for m, w in self.settings.combined_weights.items() if w > 0}
        # Each part is scored (and cached) on its own, the image hashed once for all.
        parts = await asyncio.gather(
            *(self._score_method(m, data, digest, req) for m in weights)  # type: ignore[arg-type]
        )
        total = sum(weights.values())
        raw = sum(w * p.raw_score for w, p in zip(weights.values(), parts, strict=True)) / total
        # Each factor: the weighted mean over the methods that measured it.
        factors: dict[str, float | None] = {}
        for name in FACTOR_FIELDS:
            pairs = [
                (w, getattr(p.factors, name))
                for w, p in zip(weights.values(), parts, strict=True)
                if getattr(p.factors, name) is not None
            ]
            weight = sum(w for w, _ in pairs)
            factors[name] = round(sum(w * v for w, v in pairs) / weight, 2) if weight else None
        rationale = " ".join(f"[{p.method} {p.raw_score:.1f}] {p.rationale}" for p in parts)
        return finish(raw, Factors(**factors), rationale, "combined", version)

    async def score_batch(self, batch: BatchScoreRequest) -> BatchScoreResponse:
        started = time.perf_counter()
        slots = asyncio.Semaphore(self.settings.batch_concurrency)
        done = 0

        async def one(index: int, item: ScoreRequest) -> BatchScoreResult:
            nonlocal done
            async with slots:
                try:
                    result = BatchScoreResult(
                        index=index, score=await self.score(item, batch.method)
                    )
                except APIError as exc:
                    # One bad item must not lose the others' scores.
                    error = BatchItemError(
                        type=exc.error_type, message=exc.message, param=exc.param
                    )
                    result = BatchScoreResult(index=index, error=error)
                except Exception as exc:  # a bug met by one item still fails that item alone
                    log.exception("batch item %d failed: %s", index, exc)
                    error = BatchItemError(
                        type="internal_error",
                        message=f"item {index} failed on an internal error; the judge log has "
                        "details",
                    )
                    result = BatchScoreResult(index=index, error=error)
            done += 1
            if done % PROGRESS_EVERY == 0 or done == len(batch.items):
                log.info("batch progress: %d/%d scored", done, len(batch.items))
            return result

        results = await asyncio.gather(*(one(i, item) for i, item in enumerate(batch.items)))
        return BatchScoreResponse(
            results=list(results),
            cached=sum(1 for r in results if r.score is not None and r.score.cached),
            timing_ms=round(1000 * (time.perf_counter() - started), 2),
        )
