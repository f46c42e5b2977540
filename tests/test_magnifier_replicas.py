"""Two magnifier apps (replicas behind a load balancer) sharing one image-store folder: an id
uploaded to one is served by the other. In-process apps over ASGI, real decoding and
cropping; no SR network is loaded (method crop)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from magsrl.magnifier.app import create_app
from magsrl.magnifier.config import MagnifierSettings


def _png() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def replicas(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[TestClient]]:
    shared = request.param
    with ExitStack() as stack:
        clients = []
        for name in ("a", "b"):
            settings = MagnifierSettings(
                weights_dir=tmp_path / name,
                preload=[],
                image_store_dir=tmp_path / "images" if shared else None,
                runs_dir=None,
            )
            clients.append(stack.enter_context(TestClient(create_app(settings))))
        yield clients


def _zoom(client: TestClient, image_id: str) -> int:
    body = {"image": {"id": image_id}, "boxes": [[0, 0, 40, 30]], "method": "crop"}
    return client.post("/v1/zoom", json=body).status_code


@pytest.mark.parametrize("replicas", [True], indirect=True)
def test_an_id_uploaded_to_one_replica_is_served_by_another(replicas: list[TestClient]) -> None:
    """Pins issue 15's 404: the image cache was per process, so a second replica behind
    round-robin did not know an id the first one received. With the shared store it reads
    the original from there (and caches it decoded)."""
    a, b = replicas
    data = _png()
    image_id = a.post("/v1/images", content=data, headers={"content-type": "image/png"}).json()[
        "image_id"
    ]
    assert _zoom(b, image_id) == 200
    got = b.get(f"/v1/images/{image_id}")
    assert got.status_code == 200
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(got.content))), np.asarray(Image.open(io.BytesIO(data)))
    )
    # An id that is not a hash cannot reach a file: a 404 (or 422), never a 500.
    assert b.get("/v1/images/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert _zoom(b, "0" * 64) == 404


@pytest.mark.parametrize("replicas", [False], indirect=True)
def test_without_a_shared_store_ids_stay_per_replica(replicas: list[TestClient]) -> None:
    """The control of the test above: without a store the second replica answers 404, so
    that test's 200 comes from the store and not from a shared process-wide cache."""
    a, b = replicas
    image_id = a.post("/v1/images", content=_png(), headers={"content-type": "image/png"}).json()[
        "image_id"
    ]
    assert _zoom(a, image_id) == 200
    assert _zoom(b, image_id) == 404


def test_an_unwritable_store_degrades_to_this_replica(tmp_path: Path) -> None:
    """Pins an upload answering 500 when the shared volume is not writable (not mounted
    yet, owned by another uid): the image is kept by this replica, as without a store."""
    blocker = tmp_path / "images"
    blocker.write_text("a file where the store folder should be")
    settings = MagnifierSettings(
        weights_dir=tmp_path / "w", preload=[], image_store_dir=blocker, runs_dir=None
    )
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/images", content=_png(), headers={"content-type": "image/png"})
        assert response.status_code == 200
        assert _zoom(client, response.json()["image_id"]) == 200
