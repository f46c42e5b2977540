"""The judge as a real process with a real Redis: scores over HTTP, cache hits visible in
/metrics, per-item errors in batches, and bad input answered 4xx while it keeps serving."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from magsrl.proto.judge import level_of
from tests.conftest import RunningService, photo, png_bytes, start_service

pytestmark = pytest.mark.slow  # a real judge process; test_judge_service.py is the in-process tier

PHOTO = png_bytes(photo("coffee"))
B64 = base64.b64encode(PHOTO).decode()


@pytest.fixture(scope="module")
def judge(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[RunningService]:
    env = {
        "MAGSRL_REDIS_URL": redis_server,
        "MAGSRL_MAX_BODY_BYTES": str(4 * 1024 * 1024),
        "MAGSRL_MAX_IMAGE_PIXELS": "20000000",
        "MAGSRL_URL_ALLOWLIST": "127.0.0.1",
        # Nothing listens here: the mllm and pass_rate paths must fail as 503, not hang.
        "MAGSRL_POLICY_URL": "http://127.0.0.1:9",
    }
    service = start_service("judge", tmp_path_factory.mktemp("judge"), env)
    yield service
    service.supervisor.stop()


@pytest.fixture
def client(judge: RunningService) -> Iterator[httpx.Client]:
    with judge.client() as c:
        yield c


def metric(client: httpx.Client, name: str, labels: str = "") -> float:
    text = client.get("/metrics").text
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_heuristic_score_shape(client: httpx.Client) -> None:
    resp = client.post(
        "/v1/score",
        json={"image": {"b64": B64}, "question": "What is on the plate?", "cache": False},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    # The integer score is the raw score rounded half up, and the level is its stage.
    assert body["zoom_score"] == int(body["raw_score"] + 0.5)
    assert body["level"] == level_of(body["zoom_score"])
    assert body["method"] == "heuristic"
    assert set(body["factors"]) == {
        "information_density",
        "object_scale",
        "visual_clutter",
        "detail_level",
    }
    assert body["factors"]["object_scale"] is None  # no box given
    assert body["rationale"].startswith("Heuristic:")


def test_small_box_scores_harder_than_large(client: httpx.Client) -> None:
    """object_scale: the same image asks for more zoom when the target is a speck."""
    common = {"image": {"b64": B64}, "question": "What colour is it?"}
    small = client.post("/v1/score", json={**common, "bbox": [10, 10, 22, 22]}).json()
    large = client.post("/v1/score", json={**common, "bbox": [0, 0, 580, 390]}).json()
    assert small["factors"]["object_scale"] > large["factors"]["object_scale"]
    assert small["raw_score"] > large["raw_score"]


def test_repeat_is_a_cache_hit_in_metrics(client: httpx.Client) -> None:
    """Judging a dataset twice costs nothing: the second score comes from Redis."""
    body = {"image": {"b64": B64}, "question": "How many cups are there?"}
    hits = 'magsrl_judge_cache_hits_total{method="heuristic"}'
    before = metric(client, hits)
    first = client.post("/v1/score", json=body).json()
    second = client.post("/v1/score", json=body).json()
    assert first["cached"] is False
    assert second["cached"] is True
    assert second["zoom_score"] == first["zoom_score"]
    assert metric(client, hits) == before + 1


def test_batch_keeps_good_items_when_one_is_bad(client: httpx.Client) -> None:
    items = [
        {"image": {"b64": B64}, "question": "q1"},
        {"image": {"b64": base64.b64encode(b"not an image").decode()}, "question": "q2"},
        {"image": {"b64": B64}, "question": "q3", "bbox": [5, 5, 40, 40]},
    ]
    resp = client.post("/v1/score/batch", json={"items": items})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert results[0]["score"] and results[2]["score"]
    assert results[1]["score"] is None
    assert "image" in results[1]["error"]["message"].lower()


def test_dependency_down_is_503(client: httpx.Client) -> None:
    """mllm with no endpoint running: a clear 503 naming the URL, not a 500."""
    resp = client.post("/v1/score", json={"image": {"b64": B64}, "question": "q", "method": "mllm"})
    assert resp.status_code == 503
    assert "127.0.0.1:9" in resp.json()["error"]["message"]


def jpeg_b64(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buf, "JPEG")
    return base64.b64encode(buf.getvalue()).decode()


BAD = [
    pytest.param({"question": "q"}, 422, "image", id="no-image"),
    pytest.param({"image": {"b64": B64}}, 422, "question", id="no-question"),
    pytest.param({"image": {"b64": B64}, "question": ""}, 422, "question", id="empty-question"),
    pytest.param({"image": {"b64": "%%%"}, "question": "q"}, 400, "base64", id="bad-base64"),
    pytest.param(
        {"image": {"b64": base64.b64encode(b"GIF89a junk").decode()}, "question": "q"},
        400,
        "image",
        id="not-an-image",
    ),
    pytest.param({"image": {"id": "a" * 64}, "question": "q"}, 400, "b64", id="image-id"),
    pytest.param(
        {"image": {"b64": B64}, "question": "q", "bbox": [50, 50, 10, 10]},
        422,
        "x2 > x1",
        id="inverted-box",
    ),
    pytest.param(
        {"image": {"b64": B64}, "question": "q", "bbox": [1, 2, 3]}, 422, "bbox", id="short-box"
    ),
    pytest.param(
        {"image": {"b64": B64}, "question": "q", "method": "vibes"}, 422, "method", id="bad-method"
    ),
    pytest.param(
        {"image": {"b64": B64}, "question": "q", "method": "pass_rate"},
        400,
        "answer",
        id="pass-rate-without-answer",
    ),
    pytest.param(
        {"image": {"url": "http://example.com/a.png"}, "question": "q"},
        400,
        "allow",
        id="url-not-allowlisted",
    ),
    pytest.param(
        {"image": {"b64": jpeg_b64(6000, 4000)}, "question": "q"},
        413,
        "pixels",
        id="too-many-pixels",
    ),
]


@pytest.mark.parametrize(("body", "status", "needle"), BAD)
def test_bad_input_is_4xx_and_service_survives(
    client: httpx.Client, body: dict, status: int, needle: str
) -> None:
    resp = client.post("/v1/score", json=body)
    assert resp.status_code == status, resp.text
    message = resp.json()["error"]["message"]
    assert needle.lower() in (message + str(resp.json()["error"].get("param"))).lower()
    assert (
        client.post("/v1/score", json={"image": {"b64": B64}, "question": "ok"}).status_code == 200
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param({"items": []}, 422, id="empty-batch"),
        pytest.param(
            {"items": [{"image": {"b64": jpeg_b64(8, 8)}, "question": "q"}] * 257},
            422,
            id="over-256-items",
        ),
        pytest.param(
            {"items": [{"image": {"b64": B64}, "question": "q"}] * 12}, 413, id="over-body-cap"
        ),
        pytest.param({"items": "nope"}, 422, id="items-not-list"),
    ],
)
def test_bad_batches(client: httpx.Client, body: dict, status: int) -> None:
    resp = client.post("/v1/score/batch", json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["message"]


def test_not_json(client: httpx.Client) -> None:
    resp = client.post("/v1/score", content=b"{nope", headers={"Content-Type": "application/json"})
    assert resp.status_code == 422
    assert "error" in resp.json()


def test_works_without_redis(tmp_path: Path) -> None:
    """A Redis that is down makes the judge slower, never broken: scores still come back."""
    service = start_service("judge", tmp_path, {"MAGSRL_REDIS_URL": "redis://127.0.0.1:9/0"})
    try:
        with service.client() as c:
            body = {"image": {"b64": B64}, "question": "q"}
            assert c.post("/v1/score", json=body).status_code == 200
            assert c.post("/v1/score", json=body).json()["cached"] is False
            assert metric(c, "magsrl_judge_cache_errors_total") >= 2
    finally:
        service.supervisor.stop()
