"""The judge's plain service class in-process: ``JudgeService`` with the real heuristic, the
real rubric judge talking to a scripted OpenAI-compatible endpoint (httpx.MockTransport, so
the request it sends is checked too), and a dict standing in for Redis. Milliseconds; the
HTTP app and a real Redis are covered by test_judge_api.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from magsrl.common.errors import BadRequest, UpstreamError
from magsrl.common.http_errors import http_status
from magsrl.judge.cache import ScoreCache
from magsrl.judge.config import JudgeSettings
from magsrl.judge.service import JudgeService
from magsrl.proto.judge import BatchScoreRequest, ScoreRequest

MLLM_URL = "http://mllm.test/v1"
RUBRIC = {
    "information_density": 8,
    "object_scale": 9,
    "visual_clutter": 7,
    "detail_level": 9,
    "zoom_score": 8,
    "rationale": "tiny text far away",
}


class DictRedis:
    """The two calls ScoreCache makes, on a dict."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    async def get(self, key: str) -> str | None:
        return self.data.get(key)

    async def set(self, key: str, value: str, ex: int | None = None) -> None:
        self.data[key] = value


class ScriptedMLLM:
    """An OpenAI-compatible endpoint that replies with the next scripted text."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "judge-model"}]})
        body = json.loads(request.content)
        self.bodies.append(body)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": self.replies.pop(0)}}
            for i in range(body.get("n", 1))
        ]
        return httpx.Response(200, json={"choices": choices})


def _photo_b64(size: tuple[int, int] = (96, 64)) -> str:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _service(mllm: ScriptedMLLM | None = None, **settings: Any) -> tuple[JudgeService, DictRedis]:
    registry = CollectorRegistry()
    cache = ScoreCache(None, 60, registry)
    redis = DictRedis()
    cache.client = redis  # type: ignore[assignment]
    http = httpx.AsyncClient(transport=httpx.MockTransport(mllm or ScriptedMLLM([])))
    config = JudgeSettings(judge_mllm_url=MLLM_URL, **settings)
    return JudgeService(config, http, cache, registry), redis


def _request(**fields: Any) -> ScoreRequest:
    return ScoreRequest.model_validate(
        {"image": {"b64": _photo_b64()}, "question": "What does the sign say?", **fields}
    )


def test_heuristic_scores_and_caches() -> None:
    """Pins: a score outside 1..10 or a level that disagrees with it, or a second identical
    request computed afresh instead of read from the cache."""
    service, redis = _service()
    first = asyncio.run(service.score(_request(), "heuristic"))
    assert 1 <= first.zoom_score <= 10
    assert first.level == (
        "easy" if first.zoom_score <= 3 else "medium" if first.zoom_score <= 7 else "hard"
    )
    assert not first.cached and len(redis.data) == 1
    again = asyncio.run(service.score(_request(), "heuristic"))
    assert again.cached and again.zoom_score == first.zoom_score


def test_mllm_rubric_reply_becomes_the_score() -> None:
    """Pins: the judge model's factors lost, or the image not sent to it."""
    mllm = ScriptedMLLM([json.dumps(RUBRIC)])
    service, _ = _service(mllm)
    result = asyncio.run(service.score(_request(), "mllm"))
    assert (result.zoom_score, result.level, result.method) == (8, "hard", "mllm")
    assert result.factors.object_scale == 9
    content = mllm.bodies[0]["messages"][-1]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert mllm.bodies[0]["temperature"] == 0.0  # k = 1 is deterministic


def test_an_unreadable_judge_model_is_an_upstream_error() -> None:
    """Pins: a judge model that twice answers without a score reported as the caller's bad
    request (400) instead of a bad upstream answer (502)."""
    service, _ = _service(ScriptedMLLM(["I cannot tell.", "Still no idea."]))
    with pytest.raises(UpstreamError) as info:
        asyncio.run(service.score(_request(), "mllm"))
    assert http_status(info.value) == 502


def test_one_bad_batch_item_keeps_the_others() -> None:
    """Pins: one unusable item failing the whole batch, or its error losing the field."""
    service, _ = _service()
    batch = BatchScoreRequest.model_validate(
        {
            "items": [
                {"image": {"b64": _photo_b64()}, "question": "q1"},
                {"image": {"id": "a" * 64}, "question": "q2"},
                {"image": {"b64": base64.b64encode(b"not an image").decode()}, "question": "q3"},
            ],
            "method": "heuristic",
        }
    )
    response = asyncio.run(service.score_batch(batch))
    first, by_id, broken = response.results
    assert first.score is not None and first.error is None
    assert by_id.error is not None and by_id.error.param == "image.id"
    assert broken.error is not None and broken.error.type == "invalid_request_error"


def test_an_image_id_is_refused_with_the_field() -> None:
    """Pins: the judge accepting magnifier image ids it cannot resolve."""
    service, _ = _service()
    with pytest.raises(BadRequest) as info:
        asyncio.run(service.score(_request(image={"id": "a" * 64}), "heuristic"))
    assert info.value.param == "image.id"
