"""The committed nano model, served like any checkpoint: through the policy's /answer with
the real magnifier, on held-out nano scenes it never saw, it zooms and mostly answers right.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from magsrl.data import nano_scenes as ns
from magsrl.eval.nano_set import EVAL_SPLIT
from tests.conftest import RunningService, start_policy

pytestmark = pytest.mark.slow

SCENES = 20
# docs/nano.md measures loop accuracy on 100 held-out scenes; this threshold leaves a wide
# margin under it, far above chance (10%).
MIN_RIGHT = 9
MIN_ZOOMED = 16


@pytest.fixture(scope="module")
def nano_policy(
    tmp_path_factory: pytest.TempPathFactory, magnifier: RunningService
) -> Iterator[RunningService]:
    from magsrl.models.nano_checkpoint import nano_model_dir

    nano_model_dir()  # a clear error when the weights are missing
    service = start_policy(tmp_path_factory.mktemp("nano-policy"), magnifier.url, "nano")
    yield service
    service.supervisor.stop()


def _png(image: object) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")  # type: ignore[attr-defined]
    return base64.b64encode(buf.getvalue()).decode()


def test_nano_zooms_and_answers_held_out_scenes(nano_policy: RunningService) -> None:
    """Pins a nano model that no longer zooms into the framed label or reads its digit
    (weights not committed, a recipe regression, or serving that differs from training:
    a prompt, processor or crop mismatch)."""
    right = zoomed = 0
    with nano_policy.client(timeout=120) as client:
        for i in range(SCENES):
            scene = ns.make_nano_scene(ns.scene_seed(EVAL_SPLIT + 99, i))
            resp = client.post(
                "/answer",
                json={
                    "image": {"b64": _png(scene.image)},
                    "question": ns.QUESTION,
                    "upscale": "bicubic",
                },
            )
            assert resp.status_code == 200, resp.text
            body = resp.json()
            boxes = [z["box"] for r in body["rounds"] for z in r["zooms"] if z.get("box")]
            zoomed += bool(boxes)
            right += body["answer"].strip() == scene.answer
    assert zoomed >= MIN_ZOOMED, f"{zoomed}/{SCENES} zoomed"
    assert right >= MIN_RIGHT, f"{right}/{SCENES} right"


def test_nano_weights_are_small_and_complete() -> None:
    """Pins a weights folder missing a file the offline loader needs, or grown past a few
    MB (it is committed)."""
    from magsrl.models.nano_checkpoint import WEIGHTS_DIR

    names = {p.name for p in Path(WEIGHTS_DIR).iterdir()}
    for needed in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert needed in names
    size = sum(p.stat().st_size for p in Path(WEIGHTS_DIR).iterdir() if p.is_file())
    assert size < 8_000_000
