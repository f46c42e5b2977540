"""Super-resolution quality through the real service: photos downscaled x4 (bicubic) are
magnified back by the magnifier, and the Y-PSNR against the original decides.

Pins the conversion of the official SPAN weights: a wrong layer mapping still produces an
image of the right shape, but loses to bicubic.
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import PHOTOS, decode, photo, png_bytes

pytestmark = pytest.mark.slow
PATCH = 256  # original patch side; the model sees 64x64 and returns 256x256
SHAVE = 4  # border pixels ignored, as SR benchmarks do


def y_psnr(a: np.ndarray, b: np.ndarray) -> float:
    def luma(x: np.ndarray) -> np.ndarray:  # ITU-R BT.601, as in the SR literature
        x = x.astype(np.float64)
        return 16 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255

    ya, yb = luma(a)[SHAVE:-SHAVE, SHAVE:-SHAVE], luma(b)[SHAVE:-SHAVE, SHAVE:-SHAVE]
    mse = np.mean((ya - yb) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def magnify(client: httpx.Client, low: np.ndarray, method: str) -> np.ndarray:
    h, w = low.shape[:2]
    resp = client.post(
        "/v1/zoom",
        json={
            "image": {"b64": base64.b64encode(png_bytes(low)).decode()},
            "boxes": [[0, 0, w, h]],
            "method": method,
            "max_pixels": 16 * w * h,
        },
    )
    assert resp.status_code == 200, resp.text
    (crop,) = resp.json()["crops"]
    return np.asarray(decode(base64.b64decode(crop["b64"])).convert("RGB"))


def test_span_beats_bicubic_by_1_5_db(magnifier_client: httpx.Client) -> None:
    gains = []
    for name in PHOTOS:
        full = photo(name)
        h, w = full.shape[:2]
        top, left = (h - PATCH) // 2, (w - PATCH) // 2
        hr = full[top : top + PATCH, left : left + PATCH]
        low = np.asarray(Image.fromarray(hr).resize((PATCH // 4, PATCH // 4), Image.BICUBIC))
        sr = magnify(magnifier_client, low, "span-x4")
        bic = magnify(magnifier_client, low, "bicubic")
        assert sr.shape == bic.shape == hr.shape
        gains.append(y_psnr(sr, hr) - y_psnr(bic, hr))
    assert len(gains) >= 5
    assert float(np.mean(gains)) >= 1.5, f"SPAN gain over bicubic per photo: {gains}"
