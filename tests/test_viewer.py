"""The trace viewer's HTTP side on a real policy process (tiny model, real magnifier): the page
and its assets, ``POST /v1/viewer/crops`` under every method, the sample list and images, the
4xx cases, and auth (page public, API behind the key). The page itself runs in a real
browser in test_viewer_browser.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from magsrl.cli.supervisor import free_port
from magsrl.policy.viewer_samples import BUILTIN_SCENES, BUILTIN_SIZE, SampleStore
from tests.conftest import RunningService, photo, png_bytes, start_service

pytestmark = pytest.mark.slow

KEY = "viewer-test-key"
ROCKET_SIZE = (640, 427)
# Imports between the page's modules: every one must be served, or the page dies silently.
IMPORT_PATTERN = re.compile(r'from\s+"\./([\w.-]+\.js)"')


def rocket_b64() -> str:
    return base64.b64encode(png_bytes(photo("rocket"))).decode()


def decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"}, body
    return body["error"]


# ---- the page --------------------------------------------------------------------------
def page_assets(client: httpx.Client) -> dict[str, httpx.Response]:
    """Every asset the page loads: what index.html names, then what each script imports."""
    html = client.get("/").text
    pending = re.findall(r'(?:src|href)="(static/[\w./-]+)"', html)
    seen: dict[str, httpx.Response] = {}
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        resp = client.get(f"/{path}")
        seen[path] = resp
        if path.endswith(".js") and resp.status_code == 200:
            pending += [f"static/{name}" for name in IMPORT_PATTERN.findall(resp.text)]
    return seen


def test_index_serves_the_page_and_its_assets(policy: RunningService) -> None:
    with policy.client() as client:
        resp = client.get("/")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/html")
        assert resp.headers["cache-control"] == "no-cache"
        assert '<meta name="magsrl-auth" content="off">' in resp.text
        assets = page_assets(client)
    assert {"static/viewer.css", "static/viewer.js", "static/trace.js"} <= set(assets)
    for path, asset in assets.items():
        assert asset.status_code == 200, path
        kind = asset.headers["content-type"]
        # ES modules run only when served with a JavaScript MIME type.
        assert ("javascript" in kind) if path.endswith(".js") else kind.startswith("text/css")
        assert asset.headers["cache-control"] == "no-cache"


def test_a_missing_asset_is_a_json_404(policy: RunningService) -> None:
    resp = httpx.get(f"{policy.url}/static/nope.js")
    assert resp.status_code == 404
    assert error_of(resp)["type"] == "not_found_error"


def test_the_page_is_not_in_the_api_schema(policy: RunningService) -> None:
    paths = httpx.get(f"{policy.url}/openapi.json").json()["paths"]
    assert "/" not in paths
    assert {"/v1/viewer/crops", "/v1/viewer/samples"} <= set(paths)


# ---- crops -----------------------------------------------------------------------------
def test_crops_under_every_method(policy: RunningService) -> None:
    boxes = [[100, 50, 228, 178], [300.4, 200.2, 310.6, 210.9]]  # the second under 28 px
    with policy.client() as client:
        resp = client.post(
            "/v1/viewer/crops", json={"image": {"b64": rocket_b64()}, "boxes": boxes}
        )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert re.fullmatch("[0-9a-f]{64}", body["image_id"])
    assert set(body["timing_ms"]) == {"upload", "sr", "bicubic", "crop", "total"}
    assert len(body["boxes"]) == 2
    big, small = body["boxes"]
    assert big["box"] == [100, 50, 228, 178]
    x1, y1, x2, y2 = small["box"]
    assert x2 - x1 == 28 and y2 - y1 == 28  # the design's minimum side, around the centre
    for entry in body["boxes"]:
        side = entry["box"][2] - entry["box"][0]
        sr, bicubic, crop = entry["crops"]
        assert [c["method"] for c in entry["crops"]] == ["sr", "bicubic", "crop"]
        assert sr["model"] and bicubic["model"] is None
        assert sr["width"] == bicubic["width"] > side  # magnified, to the same size
        assert crop["width"] == side  # the plain cut-out, as the original has it
        for c in entry["crops"]:
            image = decoded(c["b64"])
            assert image.size == (c["width"], c["height"]) and c["format"] == "png"


def test_crops_for_chosen_methods_in_their_order(policy: RunningService) -> None:
    with policy.client() as client:
        resp = client.post(
            "/v1/viewer/crops",
            json={
                "image": {"b64": "data:image/png;base64," + rocket_b64()},
                "boxes": [[0, 0, 64, 64]],
                "methods": ["crop", "bicubic"],
            },
        )
    assert resp.status_code == 200, resp.text
    (entry,) = resp.json()["boxes"]
    assert [c["method"] for c in entry["crops"]] == ["crop", "bicubic"]
    assert set(resp.json()["timing_ms"]) == {"upload", "crop", "bicubic", "total"}


def test_crops_by_magnifier_image_id(policy: RunningService, magnifier: RunningService) -> None:
    with magnifier.client() as client:
        image_id = client.post("/v1/images", content=png_bytes(photo("coffee"))).json()["image_id"]
    with policy.client() as client:
        resp = client.post(
            "/v1/viewer/crops",
            json={"image": {"id": image_id}, "boxes": [[10, 10, 90, 90]], "methods": ["crop"]},
        )
    assert resp.status_code == 200, resp.text
    assert resp.json()["image_id"] == image_id


BOX = [10, 10, 90, 90]


@pytest.mark.parametrize(
    ("body", "status", "param", "says"),
    [
        pytest.param({"boxes": [[90, 10, 10, 90]]}, 422, "boxes", "x2 > x1", id="inverted-box"),
        pytest.param({"boxes": [[10, 10, 90]]}, 422, "boxes[0]", "at least 4", id="three-numbers"),
        pytest.param({"boxes": [BOX] * 17}, 422, "boxes", "at most 16", id="too-many-boxes"),
        pytest.param({"boxes": []}, 422, "boxes", "at least 1", id="no-boxes"),
        pytest.param(
            {"boxes": [BOX, [5000, 5000, 6000, 6000]]},
            422,
            "boxes[1]",
            "outside the 640x427 image",
            id="box-outside-the-image",
        ),
        pytest.param(
            {"boxes": [BOX], "methods": ["sr", "lanczos"]}, 422, "methods[1]", "'sr'", id="method"
        ),
        pytest.param(
            {"boxes": [BOX], "methods": ["sr", "sr"]}, 422, "methods", "repeats", id="repeat"
        ),
        pytest.param(
            {"boxes": [BOX], "image": {"b64": "not base64!"}},
            400,
            "image.b64",
            "base64",
            id="bad-base64",
        ),
        pytest.param(
            {"boxes": [BOX], "image": {"b64": base64.b64encode(b"hello").decode()}},
            400,
            "image",
            "not a decodable image",
            id="not-an-image",
        ),
        pytest.param(
            {"boxes": [BOX], "image": {"id": "0" * 64}},
            404,
            "image.id",
            "unknown image id",
            id="unknown-image-id",
        ),
    ],
)
def test_bad_crop_requests(
    policy: RunningService, body: dict, status: int, param: str, says: str
) -> None:
    with policy.client() as client:
        resp = client.post("/v1/viewer/crops", json={"image": {"b64": rocket_b64()}, **body})
        error = error_of(resp)
        assert resp.status_code == status, resp.text
        assert error["param"] == param
        assert says in error["message"]
        assert client.get("/v1/viewer/samples").status_code == 200  # and it still serves


def test_crops_body_that_is_not_json(policy: RunningService) -> None:
    resp = httpx.post(
        f"{policy.url}/v1/viewer/crops",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 422
    assert "JSON" in error_of(resp)["message"]


# ---- samples ---------------------------------------------------------------------------
def test_builtin_samples_and_their_images(policy: RunningService) -> None:
    with policy.client() as client:
        listing = client.get("/v1/viewer/samples")
        assert listing.status_code == 200
        body = listing.json()
        assert body["source"] == "builtin"
        assert len(body["data"]) == BUILTIN_SCENES
        first = body["data"][0]
        assert first["question"] and first["answer"] and first["category"]
        assert (first["width"], first["height"]) == BUILTIN_SIZE
        resp = client.get(f"/v1/viewer/samples/{first['id']}/image")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(resp.content)).size == BUILTIN_SIZE


def test_unknown_sample_is_404(policy: RunningService) -> None:
    resp = httpx.get(f"{policy.url}/v1/viewer/samples/no-such-sample/image")
    assert resp.status_code == 404
    error = error_of(resp)
    assert "no-such-sample" in error["message"] and "/v1/viewer/samples" in error["message"]


def test_builtin_scenes_are_deterministic() -> None:
    """Two processes must offer the same scenes, or a shared sample id would mean nothing."""

    async def scenes() -> tuple[list[str], bytes]:
        store = SampleStore(None, limit=24)
        listing = await store.list()
        data, _ = await store.image(listing.data[-1].id)
        return [s.question for s in listing.data], data

    assert asyncio.run(scenes()) == asyncio.run(scenes())


# ---- auth, dataset samples, and a magnifier that is down --------------------------------
@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[RunningService]:
    """A policy with a key, samples from a dataset file (one of them a TIFF, which browsers
    cannot show), and a magnifier URL where nothing listens."""
    tmp = tmp_path_factory.mktemp("viewer-secured")
    Image.fromarray(photo("coffee")).save(tmp / "coffee.jpg", quality=90)
    Image.fromarray(photo("chelsea")).save(tmp / "chelsea.tiff")
    Image.fromarray(photo("rocket")).save(tmp / "rocket.png")
    rows = [
        {"id": "coffee", "image": "coffee.jpg", "question": "In the cup?", "answer": "coffee"},
        {"id": "cats/chelsea", "image": "chelsea.tiff", "question": "What animal?"}
        | {"answer": "B", "options": ["dog", "cat"], "scorer": "mc"},
        {"id": "rocket", "image": "rocket.png", "question": "Past the limit?", "answer": "yes"},
    ]
    (tmp / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    env = {
        "MAGSRL_POLICY_MODEL": str(tiny_model_dir),
        "MAGSRL_MAGNIFIER_URL": f"http://127.0.0.1:{free_port()}",
        "MAGSRL_TORCH_THREADS": "2",
        "MAGSRL_VIEWER_SAMPLES": str(tmp / "data.jsonl"),
        "MAGSRL_VIEWER_SAMPLES_LIMIT": "2",
    }
    service = start_service("policy", tmp, env, api_key=KEY)
    yield service
    service.supervisor.stop()


@pytest.mark.parametrize("path", ["/", "/static/viewer.js", "/static/viewer.css", "/health"])
def test_page_and_assets_are_public(secured: RunningService, path: str) -> None:
    resp = httpx.get(secured.url + path)
    assert resp.status_code == 200
    if path == "/":
        # The page learns that it must ask for the key before its first API call.
        assert '<meta name="magsrl-auth" content="required">' in resp.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/viewer/samples"),
        ("GET", "/v1/viewer/samples/coffee/image"),
        ("POST", "/v1/viewer/crops"),
        ("POST", "/answer"),
    ],
)
def test_viewer_api_needs_the_key(secured: RunningService, method: str, path: str) -> None:
    resp = httpx.request(method, secured.url + path, json={})
    assert resp.status_code == 401
    assert "API key" in error_of(resp)["message"]


def test_samples_from_a_dataset(secured: RunningService) -> None:
    with secured.client() as client:
        body = client.get("/v1/viewer/samples").json()
        assert body["source"].endswith("data.jsonl")
        assert [s["id"] for s in body["data"]] == ["coffee", "cats/chelsea"]  # the limit: 2
        coffee, chelsea = body["data"]
        assert (coffee["width"], coffee["height"]) == (600, 400)
        assert chelsea["options"] == ["dog", "cat"] and chelsea["answer"] == "B"
        jpeg = client.get("/v1/viewer/samples/coffee/image")
        tiff = client.get("/v1/viewer/samples/cats/chelsea/image")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (600, 400)
    assert tiff.headers["content-type"] == "image/png"  # converted: browsers show no TIFF
    assert Image.open(io.BytesIO(tiff.content)).size == (451, 300)


def test_crops_when_the_magnifier_is_down(secured: RunningService) -> None:
    with secured.client() as client:
        resp = client.post(
            "/v1/viewer/crops", json={"image": {"b64": rocket_b64()}, "boxes": [BOX]}
        )
    assert resp.status_code == 503
    error = error_of(resp)
    assert error["type"] == "service_unavailable"
    assert "magnifier is unavailable" in error["message"]
