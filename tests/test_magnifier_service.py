"""The magnifier's plain service class in-process: ``Magnifier`` with a stand-in SR network
(nearest-neighbour x4, so every output pixel is checkable), real image decoding, real box
conversion, real sizing plans and real encoding. Milliseconds; the real networks and HTTP
are covered by test_magnifier_api.py and test_sr_networks.py."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from magsrl.common.errors import NotFound, ServiceUnavailable, UnprocessableEntity
from magsrl.magnifier.config import MagnifierSettings
from magsrl.magnifier.engine import BackendUnavailable
from magsrl.magnifier.service import Magnifier
from magsrl.magnifier.sr.weights import BACKENDS, BackendSpec
from magsrl.proto.magnifier import ZoomRequest

WIDTH, HEIGHT = 200, 100


class NearestSR:
    """What ``Magnifier`` needs of ``SREngine``: span-x4 is there, and upscales by repeating
    pixels; ``down`` makes it fail as a network that cannot load."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def available(self) -> dict[str, BackendSpec]:
        return {"span-x4": BACKENDS["span-x4"]}

    def unavailable_reason(self, name: str) -> str | None:
        return None if name == "span-x4" else f"{name} is not prepared"

    async def upscale(self, name: str, array: np.ndarray) -> np.ndarray:
        self.calls.append((name, array.shape))
        if self.down:
            raise BackendUnavailable("the network failed to load")
        return array.repeat(4, axis=0).repeat(4, axis=1)


def _gradient() -> np.ndarray:
    """Every pixel distinct, so a crop from the wrong place cannot match by accident."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _magnifier(tmp_path: Path, engine: NearestSR | None = None) -> Magnifier:
    settings = MagnifierSettings(weights_dir=tmp_path, preload=[], min_box_side=8)
    return Magnifier(settings, engine or NearestSR(), httpx.AsyncClient())  # type: ignore[arg-type]


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_upload_then_crop_by_id(tmp_path: Path) -> None:
    """Pins: a crop cut from the wrong rows or columns (x/y swapped, off by one), or an
    uploaded image that cannot be referred to by its id."""
    source = _gradient()
    magnifier = _magnifier(tmp_path)

    async def run() -> tuple[str, list[int], np.ndarray]:
        info = await magnifier.put_image(_png(source))
        req = ZoomRequest(
            image={"id": info.image_id}, boxes=[[20, 10, 60, 50]], method="crop", format="png"
        )
        response = await magnifier.zoom(req)
        crop = response.crops[0]
        return info.image_id, crop.box, _decode(crop.b64)

    image_id, box, pixels = asyncio.run(run())
    assert len(image_id) == 64
    assert box == [20, 10, 60, 50]
    assert np.array_equal(pixels, source[10:50, 20:60])  # lossless: exactly those pixels


def test_sr_runs_the_network_on_the_region(tmp_path: Path) -> None:
    """Pins: the network fed the whole image or a shifted region, or its output resized to
    a size the plan did not ask for."""
    source = _gradient()
    engine = NearestSR()
    magnifier = _magnifier(tmp_path, engine)
    req = ZoomRequest(
        image={"b64": base64.b64encode(_png(source)).decode()},
        boxes=[[0, 0, 32, 16]],
        method="sr",
        format="png",
    )
    crop = asyncio.run(magnifier.zoom(req)).crops[0]
    assert engine.calls == [("span-x4", (16, 32, 3))]
    assert (crop.method, crop.model, crop.perceptual) == ("sr", "span-x4", False)
    expected = source[0:16, 0:32].repeat(4, axis=0).repeat(4, axis=1)
    assert np.array_equal(_decode(crop.b64), expected)


def test_norm1000_and_pixel_boxes_agree(tmp_path: Path) -> None:
    """Pins: a coordinate convention converted against the wrong side (1000 over width for y)."""
    magnifier = _magnifier(tmp_path)
    data = base64.b64encode(_png(_gradient())).decode()

    def box(coords: str, raw: list[float]) -> list[int]:
        req = ZoomRequest(image={"b64": data}, boxes=[raw], coords=coords, method="crop")
        return asyncio.run(magnifier.zoom(req)).crops[0].box

    assert box("pixel", [50, 20, 150, 80]) == box("norm1000", [250, 200, 750, 800])


@pytest.mark.parametrize(
    ("request_fields", "error", "param"),
    [
        pytest.param({"image": {"id": "0" * 64}}, NotFound, "image.id", id="unknown-id"),
        pytest.param({"method": "nope"}, UnprocessableEntity, "method", id="unknown-method"),
        pytest.param(
            {"method": "realesrgan-x4plus"}, UnprocessableEntity, "method", id="not-prepared"
        ),
        pytest.param(
            {"boxes": [[0, 0, 10, 10], [300, 300, 400, 400]]},
            UnprocessableEntity,
            "boxes[1]",
            id="box-outside",
        ),
    ],
)
def test_refusals_name_the_field(
    tmp_path: Path, request_fields: dict[str, object], error: type[Exception], param: str
) -> None:
    """Pins: a caller's mistake raised as a plain exception (a 500 at the edge) or without
    the field to fix."""
    magnifier = _magnifier(tmp_path)
    fields: dict[str, object] = {
        "image": {"b64": base64.b64encode(_png(_gradient())).decode()},
        "boxes": [[0, 0, 40, 40]],
        "method": "crop",
        **request_fields,
    }
    with pytest.raises(error) as info:
        asyncio.run(magnifier.zoom(ZoomRequest.model_validate(fields)))
    assert getattr(info.value, "param", None) == param


def test_a_failing_network_is_unavailable_not_bad_input(tmp_path: Path) -> None:
    """Pins: an SR network that cannot run reported as the caller's fault (4xx), so clients
    would not retry and operators would not be paged."""
    magnifier = _magnifier(tmp_path, NearestSR(down=True))
    req = ZoomRequest(
        image={"b64": base64.b64encode(_png(_gradient())).decode()},
        boxes=[[0, 0, 32, 16]],
        method="sr",
    )
    with pytest.raises(ServiceUnavailable):
        asyncio.run(magnifier.zoom(req))


def test_sr_out_of_memory_is_resource_exhausted(tmp_path: Path) -> None:
    """Pins: a GPU running out of memory mid-forward reported as an unexpected 500 (or the
    caller's fault) rather than a 503 to retry."""
    import torch

    from magsrl.common.errors import ResourceExhausted
    from magsrl.magnifier.engine import SREngine

    class OutOfMemory(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.OutOfMemoryError("CUDA out of memory")

    engine = SREngine(MagnifierSettings(weights_dir=tmp_path, preload=[]))
    forward = engine._forward_fn("span-x4", OutOfMemory())
    with pytest.raises(ResourceExhausted, match="MAGSRL_MAX_BATCH"):
        forward(torch.zeros(1, 3, 8, 8))
