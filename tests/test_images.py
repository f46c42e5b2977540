"""Decoding straight to the model's view (`decode_reduced`): JPEG DCT scaling, EXIF rotation,
and the same 4xx checks as a full decode (pure functions on real photos)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from magsrl.common.errors import BadRequest, PayloadTooLarge
from magsrl.common.images import decode_image, decode_reduced
from tests.conftest import photo


def jpeg(array: np.ndarray, orientation: int = 1) -> bytes:
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def half(width: int, height: int) -> tuple[int, int]:
    return width // 4, height // 4


def test_jpeg_is_reduced_and_matches_a_full_decode() -> None:
    data = jpeg(photo("rocket"))  # 640x427
    image, original = decode_reduced(data, max_pixels=10**7, target=half)
    assert original == (640, 427)
    assert image.size == (160, 106)
    full = decode_image(data, max_pixels=10**7).resize((160, 106), Image.BICUBIC)
    diff = np.abs(np.asarray(image, float) - np.asarray(full, float)).mean()
    assert diff < 4  # DCT scaling vs full decode + resize: the same picture


def test_exif_rotation_swaps_the_original_size() -> None:
    """Orientation 6 (rotated 90°): boxes refer to the image as a person sees it."""
    image, original = decode_reduced(
        jpeg(photo("rocket"), orientation=6), max_pixels=10**7, target=half
    )
    assert original == (427, 640)
    assert image.size == (106, 160)
    assert (
        image.size
        == decode_image(jpeg(photo("rocket"), 6), max_pixels=10**7).resize((106, 160)).size
    )


@pytest.mark.parametrize(
    ("data", "max_pixels", "error"),
    [
        pytest.param(b"", 10**7, BadRequest, id="empty"),
        pytest.param(b"not an image", 10**7, BadRequest, id="not-an-image"),
        pytest.param(jpeg(photo("rocket"))[:3000], 10**7, BadRequest, id="truncated"),
        pytest.param(jpeg(photo("rocket")), 100_000, PayloadTooLarge, id="too-many-pixels"),
    ],
)
def test_same_checks_as_a_full_decode(data: bytes, max_pixels: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_reduced(data, max_pixels=max_pixels, target=half)
