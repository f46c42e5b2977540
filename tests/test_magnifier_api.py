"""The magnifier over real HTTP: a real `magsrl serve magnifier` process with real weights."""

from __future__ import annotations

import base64
import hashlib

import httpx
import numpy as np
import pytest

from tests.conftest import decode, photo, png_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rocket(magnifier_client: httpx.Client) -> tuple[str, bytes, np.ndarray]:
    array = photo("rocket")  # 640x427
    data = png_bytes(array)
    resp = magnifier_client.post("/v1/images", content=data, headers={"Content-Type": "image/png"})
    assert resp.status_code == 200, resp.text
    return resp.json()["image_id"], data, array


def zoom(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/v1/zoom", json=body)


def test_upload_raw_returns_sha256_and_size(rocket: tuple[str, bytes, np.ndarray]) -> None:
    image_id, data, _array = rocket
    assert image_id == hashlib.sha256(data).hexdigest()


def test_upload_multipart(
    magnifier_client: httpx.Client, rocket: tuple[str, bytes, np.ndarray]
) -> None:
    image_id, data, _ = rocket
    resp = magnifier_client.post("/v1/images", files={"image": ("r.png", data, "image/png")})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"image_id": image_id, "width": 640, "height": 427}


def test_zoom_by_id_super_resolves_to_budget(
    magnifier_client: httpx.Client, rocket: tuple[str, bytes, np.ndarray]
) -> None:
    image_id, _, array = rocket
    resp = zoom(magnifier_client, image={"id": image_id}, boxes=[[100, 100, 228, 228]])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["image_id"] == image_id
    (crop,) = body["crops"]
    assert crop["box"] == [100, 100, 228, 228]
    assert (crop["method"], crop["model"], crop["scale"]) == ("sr", "span-x4", 4.0)
    assert crop["perceptual"] is False
    out = np.asarray(decode(base64.b64decode(crop["b64"])).convert("RGB"))
    assert out.shape == (512, 512, 3) == (crop["height"], crop["width"], 3)
    # The SR output is the region, magnified: shrunk back, it matches the source crop.
    small = np.asarray(decode(base64.b64decode(crop["b64"])).convert("RGB").resize((128, 128)))
    diff = np.abs(small.astype(float) - array[100:228, 100:228].astype(float)).mean()
    assert diff < 6.0
    assert set(body["timing_ms"]) == {"resolve", "upscale", "encode", "total"}


@pytest.mark.parametrize(
    ("method", "model", "perceptual"),
    [
        pytest.param("bicubic", None, False, id="bicubic"),
        pytest.param("span-x4", "span-x4", False, id="span"),
        pytest.param("compact-x4", "compact-x4", True, id="compact"),
        pytest.param("realesrgan-x4plus", "realesrgan-x4plus", True, id="realesrgan"),
    ],
)
def test_methods(
    magnifier_client: httpx.Client,
    rocket: tuple[str, bytes, np.ndarray],
    method: str,
    model: str | None,
    perceptual: bool,
) -> None:
    image_id, _, _ = rocket
    resp = zoom(magnifier_client, image={"id": image_id}, boxes=[[0, 0, 64, 48]], method=method)
    assert resp.status_code == 200, resp.text
    (crop,) = resp.json()["crops"]
    assert crop["model"] == model
    assert crop["perceptual"] is perceptual
    assert (crop["width"], crop["height"]) == (256, 192)
    assert decode(base64.b64decode(crop["b64"])).size == (256, 192)


def test_crop_method_returns_original_pixels(
    magnifier_client: httpx.Client, rocket: tuple[str, bytes, np.ndarray]
) -> None:
    image_id, _, array = rocket
    resp = zoom(magnifier_client, image={"id": image_id}, boxes=[[10, 20, 110, 70]], method="crop")
    (crop,) = resp.json()["crops"]
    out = np.asarray(decode(base64.b64decode(crop["b64"])).convert("RGB"))
    assert np.array_equal(out, array[20:70, 10:110])


def test_sr_picks_the_x2_network_when_enough(
    magnifier_client: httpx.Client, rocket: tuple[str, bytes, np.ndarray]
) -> None:
    image_id, _, _ = rocket
    resp = zoom(
        magnifier_client, image={"id": image_id}, boxes=[[0, 0, 200, 200]], max_pixels=300 * 300
    )
    (crop,) = resp.json()["crops"]
    assert (crop["model"], crop["width"], crop["height"]) == ("span-x2", 300, 300)


def test_crop_at_budget_is_not_super_resolved(
    magnifier_client: httpx.Client, rocket: tuple[str, bytes, np.ndarray]
) -> None:
    image_id, _, _ = rocket
    resp = zoom(
        magnifier_client, image={"id": image_id}, boxes=[[0, 0, 640, 427]], max_pixels=200 * 200
    )
    (crop,) = resp.json()["crops"]
    assert crop["method"] == "crop"
    assert crop["width"] * crop["height"] <= 200 * 200


@pytest.mark.parametrize(
    ("coords", "box"),
    [
        pytest.param("pixel", [320, 0, 640, 213.5], id="pixel"),
        pytest.param("norm1", [0.5, 0.0, 1.0, 0.5], id="norm1"),
        pytest.param("norm1000", [500, 0, 1000, 500], id="norm1000"),
    ],
)
def test_coordinate_conventions(
    magnifier_client: httpx.Client,
    rocket: tuple[str, bytes, np.ndarray],
    coords: str,
    box: list[float],
) -> None:
    image_id, _, _ = rocket
    resp = zoom(magnifier_client, image={"id": image_id}, boxes=[box], coords=coords, method="crop")
    assert resp.status_code == 200, resp.text
    assert resp.json()["crops"][0]["box"] == [320, 0, 640, 214]


def test_small_box_is_expanded_and_kept_inside(
    magnifier_client: httpx.Client, rocket: tuple[str, bytes, np.ndarray]
) -> None:
    image_id, _, _ = rocket
    resp = zoom(
        magnifier_client, image={"id": image_id}, boxes=[[636, 420, 640, 427]], method="crop"
    )
    assert resp.json()["crops"][0]["box"] == [612, 399, 640, 427]


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_output_formats(
    magnifier_client: httpx.Client, rocket: tuple[str, bytes, np.ndarray], fmt: str
) -> None:
    image_id, _, _ = rocket
    resp = zoom(
        magnifier_client,
        image={"id": image_id},
        boxes=[[0, 0, 100, 100]],
        method="bicubic",
        format=fmt,
        quality=70,
    )
    (crop,) = resp.json()["crops"]
    assert crop["format"] == fmt
    assert decode(base64.b64decode(crop["b64"])).format == fmt.upper()


def test_several_boxes_and_b64_source(
    magnifier_client: httpx.Client, rocket: tuple[str, bytes, np.ndarray]
) -> None:
    image_id, data, _ = rocket
    b64 = "data:image/png;base64," + base64.b64encode(data).decode()
    resp = zoom(
        magnifier_client,
        image={"b64": b64},
        boxes=[[0, 0, 50, 50], [100, 100, 300, 200], [600, 400, 640, 427]],
        method="bicubic",
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["image_id"] == image_id
    assert [c["box"] for c in body["crops"]] == [
        [0, 0, 50, 50],
        [100, 100, 300, 200],
        [600, 399, 640, 427],
    ]


def test_large_crop_is_tiled_and_seamless(magnifier_client: httpx.Client) -> None:
    """A crop larger than the tile size goes through overlapping tiles; the stitched output
    must show no seams: its difference from bicubic has no spike along tile borders."""
    array = photo("hubble_deep_field")[:600, :600]
    data = png_bytes(array)
    image_id = magnifier_client.post(
        "/v1/images", content=data, headers={"Content-Type": "image/png"}
    ).json()["image_id"]
    resp = zoom(
        magnifier_client,
        image={"id": image_id},
        boxes=[[0, 0, 600, 600]],
        method="span-x2",
        max_pixels=1200 * 1200,
    )
    assert resp.status_code == 200, resp.text
    (crop,) = resp.json()["crops"]
    assert (crop["width"], crop["height"]) == (1200, 1200)
    out = np.asarray(decode(base64.b64decode(crop["b64"])).convert("RGB")).astype(float)
    # Row-to-row jumps at the tile cuts are no larger than elsewhere in the image.
    row_jumps = np.abs(np.diff(out, axis=0)).mean(axis=(1, 2))
    assert row_jumps.max() < 4 * np.median(row_jumps) + 10


def test_url_source_with_allowlist(
    magnifier_client: httpx.Client, magnifier: object, rocket: tuple[str, bytes, np.ndarray]
) -> None:
    _image_id, _, _ = rocket
    # The magnifier itself serves as the URL host: 127.0.0.1 is allowlisted in the fixture,
    # and /openapi.json is not an image, which proves the fetch really happened.
    url = f"{magnifier.url}/openapi.json"  # type: ignore[attr-defined]
    resp = zoom(magnifier_client, image={"url": url}, boxes=[[0, 0, 10, 10]])
    assert resp.status_code == 400
    assert "not a decodable image" in resp.json()["error"]["message"]
    localhost = url.replace("127.0.0.1", "localhost")
    resp = zoom(magnifier_client, image={"url": localhost}, boxes=[[0, 0, 10, 10]])
    assert resp.status_code == 400
    assert "allowlist" in resp.json()["error"]["message"]


def test_methods_endpoint_lists_backends(magnifier_client: httpx.Client) -> None:
    body = magnifier_client.get("/v1/methods").json()
    names = {b["name"]: b for b in body["backends"]}
    assert names["span-x4"]["available"] and names["span-x4"]["loaded"]
    assert names["smfanet-x4"]["available"] is False
    assert "MAGSRL_SMFANET_CHECKPOINT" in names["smfanet-x4"]["reason"]
    assert body["device"] == "cpu"
