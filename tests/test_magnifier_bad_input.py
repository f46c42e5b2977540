"""Every kind of bad input gets a clear 4xx envelope, never a 5xx, and the service keeps
serving afterwards (checked after each case)."""

from __future__ import annotations

import struct
import zlib

import httpx
import numpy as np
import pytest

from tests.conftest import photo, png_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image_id(magnifier_client: httpx.Client) -> str:
    data = png_bytes(photo("chelsea"))
    return magnifier_client.post(
        "/v1/images", content=data, headers={"Content-Type": "image/png"}
    ).json()["image_id"]


def png_with_size(width: int, height: int) -> bytes:
    """A structurally valid PNG header claiming any size (for zero-size and bomb cases)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def assert_error(
    resp: httpx.Response, status: int, *, param: str | None = None, says: str | None = None
) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["type"] and error["message"]
    assert "Traceback" not in resp.text
    if param is not None:
        assert error.get("param") == param, error
    if says is not None:
        assert says.lower() in error["message"].lower(), error["message"]


def still_serves(client: httpx.Client, image_id: str) -> None:
    resp = client.post(
        "/v1/zoom", json={"image": {"id": image_id}, "boxes": [[0, 0, 40, 40]], "method": "bicubic"}
    )
    assert resp.status_code == 200, resp.text


TRUNCATED = png_bytes(photo("coffee"))[:5000]

UPLOAD_CASES = [
    pytest.param(
        b"definitely not an image", "image/png", 400, "not a decodable image", id="not-an-image"
    ),
    pytest.param(TRUNCATED, "image/png", 400, "truncated", id="truncated"),
    pytest.param(png_with_size(3000, 3000), "image/png", 413, "over the limit", id="too-many-px"),
    pytest.param(png_with_size(0, 10), "image/png", 400, None, id="zero-size"),
    pytest.param(b"", "image/png", 400, "empty", id="empty"),
    pytest.param(b'{"a": 1}', "application/json", 400, "raw", id="json-instead-of-bytes"),
]


@pytest.mark.parametrize(("data", "ctype", "status", "says"), UPLOAD_CASES)
def test_bad_uploads(
    magnifier_client: httpx.Client,
    image_id: str,
    data: bytes,
    ctype: str,
    status: int,
    says: str | None,
) -> None:
    resp = magnifier_client.post("/v1/images", content=data, headers={"Content-Type": ctype})
    assert_error(resp, status, says=says)
    still_serves(magnifier_client, image_id)


def test_multipart_without_image_field(magnifier_client: httpx.Client, image_id: str) -> None:
    resp = magnifier_client.post("/v1/images", files={"other": ("x.png", b"abc", "image/png")})
    assert_error(resp, 400, param="image", says="'image'")
    still_serves(magnifier_client, image_id)


def test_oversized_body(magnifier_client: httpx.Client, image_id: str) -> None:
    resp = magnifier_client.post(
        "/v1/images", content=b"\0" * (7 * 1024 * 1024), headers={"Content-Type": "image/png"}
    )
    assert_error(resp, 413, says="exceeds the limit")
    still_serves(magnifier_client, image_id)


def test_oversized_chunked_body(magnifier_client: httpx.Client, image_id: str) -> None:
    def chunks():  # no Content-Length: the cap is enforced while streaming
        for _ in range(8):
            yield b"\0" * (1024 * 1024)

    resp = magnifier_client.post(
        "/v1/images", content=chunks(), headers={"Content-Type": "image/png"}
    )
    assert_error(resp, 413, says="exceeds the limit")
    still_serves(magnifier_client, image_id)


ZOOM_CASES = [
    pytest.param(
        '{"image": {"id": "ID"}, "boxes": [[NaN, 0, 10, 10]]}', 422, "boxes[0][0]", None, id="nan"
    ),
    pytest.param(
        '{"image": {"id": "ID"}, "boxes": [[0, 0, Infinity, 10]]}',
        422,
        "boxes[0][2]",
        None,
        id="infinity",
    ),
    pytest.param(
        '{"image": {"id": "ID"}, "boxes": [[50, 0, 10, 10]]}',
        422,
        "boxes[0]",
        "inverted",
        id="inverted",
    ),
    pytest.param(
        '{"image": {"id": "ID"}, "boxes": [["a", 0, 10, 10]]}',
        422,
        "boxes[0][0]",
        None,
        id="non-numeric",
    ),
    pytest.param(
        '{"image": {"id": "ID"}, "boxes": [[0, 0, 10]]}', 422, "boxes[0]", None, id="three-numbers"
    ),
    pytest.param(
        '{"image": {"id": "ID"}, "boxes": [[5000, 5000, 6000, 6000]]}',
        422,
        "boxes[0]",
        "outside",
        id="outside-image",
    ),
    pytest.param(
        '{"image": {"id": "ID"}, "boxes": [' + ",".join(["[0,0,9,9]"] * 17) + "]}",
        422,
        "boxes",
        "at most 16",
        id="too-many-boxes",
    ),
    pytest.param('{"image": {"id": "ID"}, "boxes": []}', 422, "boxes", None, id="no-boxes"),
    pytest.param(
        '{"image": {"id": "ID"}, "boxes": [[0,0,9,9]], "method": "magic"}',
        422,
        "method",
        "unknown method",
        id="unknown-method",
    ),
    pytest.param(
        '{"image": {"id": "ID"}, "boxes": [[0,0,9,9]], "method": "smfanet-x4"}',
        422,
        "method",
        "MAGSRL_SMFANET_CHECKPOINT",
        id="unconfigured-backend",
    ),
    pytest.param(
        '{"image": {"id": "ID"}, "boxes": [[0,0,9,9]], "coords": "inches"}',
        422,
        "coords",
        None,
        id="unknown-coords",
    ),
    pytest.param(
        '{"image": {"id": "ID"}, "boxes": [[0,0,9,9]], "format": "gif"}',
        422,
        "format",
        None,
        id="unknown-format",
    ),
    pytest.param(
        '{"image": {"id": "ID"}, "boxes": [[0,0,9,9]], "max_pixels": 10}',
        422,
        "max_pixels",
        None,
        id="tiny-budget",
    ),
    pytest.param(
        '{"image": {"id": "' + "0" * 64 + '"}, "boxes": [[0,0,9,9]]}',
        404,
        "image.id",
        "unknown image id",
        id="unknown-id",
    ),
    pytest.param(
        '{"image": {"id": "xyz"}, "boxes": [[0,0,9,9]]}', 422, "image.id", None, id="malformed-id"
    ),
    pytest.param('{"image": {}, "boxes": [[0,0,9,9]]}', 422, "image", "exactly one", id="no-image"),
    pytest.param(
        '{"image": {"id": "ID", "b64": "AAAA"}, "boxes": [[0,0,9,9]]}',
        422,
        "image",
        "exactly one",
        id="two-sources",
    ),
    pytest.param(
        '{"image": {"b64": "***"}, "boxes": [[0,0,9,9]]}',
        400,
        "image.b64",
        "base64",
        id="bad-base64",
    ),
    pytest.param(
        '{"image": {"b64": "aGVsbG8="}, "boxes": [[0,0,9,9]]}',
        400,
        "image.b64",
        "not a decodable image",
        id="b64-not-image",
    ),
    pytest.param(
        '{"image": {"url": "file:///etc/passwd"}, "boxes": [[0,0,9,9]]}',
        400,
        "image.url",
        "file:",
        id="file-url",
    ),
    pytest.param(
        '{"image": {"url": "http://example.com/a.png"}, "boxes": [[0,0,9,9]]}',
        400,
        "image.url",
        "allowlist",
        id="host-not-allowed",
    ),
    pytest.param(
        '{"image": {"id": "ID"}, "boxes": [[0,0,9,9]]', 422, None, "json", id="broken-json"
    ),
    pytest.param("[1, 2, 3]", 422, None, None, id="json-array"),
]


@pytest.mark.parametrize(("body", "status", "param", "says"), ZOOM_CASES)
def test_bad_zoom_requests(
    magnifier_client: httpx.Client,
    image_id: str,
    body: str,
    status: int,
    param: str | None,
    says: str | None,
) -> None:
    resp = magnifier_client.post(
        "/v1/zoom",
        content=body.replace("ID", image_id),
        headers={"Content-Type": "application/json"},
    )
    assert_error(resp, status, param=param, says=says)
    still_serves(magnifier_client, image_id)


def test_unknown_route_and_method(magnifier_client: httpx.Client, image_id: str) -> None:
    assert_error(magnifier_client.get("/v1/nothing"), 404)
    assert_error(magnifier_client.get("/v1/zoom"), 405)
    still_serves(magnifier_client, image_id)


def test_grey_and_alpha_images_are_accepted(magnifier_client: httpx.Client) -> None:
    grey = photo("camera")[..., 0]
    rgba = np.dstack([photo("astronaut"), np.full((512, 512), 128, np.uint8)])
    for array in (grey, rgba):
        resp = magnifier_client.post(
            "/v1/images", content=png_bytes(array), headers={"Content-Type": "image/png"}
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["width"] == 512
