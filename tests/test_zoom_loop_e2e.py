"""The full zoom loop through the real engine: the tiny model is fine-tuned (seconds on CPU)
until it emits a scripted trajectory, then served by a real policy process that calls the
real magnifier. Pins that /answer returns the model's answer, the boxes mapped to original
pixels, and real crops; and that the Hermes form reaches SDK clients as tool_calls."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from magsrl.cli.supervisor import free_port
from magsrl.common.coords import Convention
from magsrl.policy.scripted import Script, build_scripted_model, conversation
from magsrl.proto.tools import zoom_tool
from magsrl.zoom.boxes import original_slot, to_original_crop
from magsrl.zoom.families import FAMILIES, resized_size
from tests.conftest import RunningService, photo, png_bytes, start_policy

pytestmark = pytest.mark.slow

QUESTION = "What colour is the small sign?"
BOX = [60, 40, 120, 100]  # in the tiny model's resized frame (Qwen2.5-VL convention)
ROUND1 = {
    "tags": f"<think>The sign is too small.<zoom>[{BOX}]</zoom></think>",
    "tools": '<tool_call>\n{"name": "zoom", "arguments": {"bbox_2d": '
    + str(BOX)
    + ', "label": "sign"}}\n</tool_call>',
}
ROUND2 = "<rethink>The magnified view shows it.</rethink><answer>red</answer>"


Trajectory = tuple[str, RunningService, Path]  # protocol, policy process, model folder


def rocket_png() -> bytes:
    return png_bytes(photo("rocket"))


def script(protocol: str) -> Script:
    return Script(rocket_png(), QUESTION, ROUND1[protocol], ROUND2, protocol)


@pytest.fixture(scope="module", params=["tags", "tools"])
def trajectory_policy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    magnifier: RunningService,
    tiny_model_dir: Path,
) -> Iterator[Trajectory]:
    protocol = request.param
    tmp = tmp_path_factory.mktemp(f"trajectory-{protocol}")
    model = tmp / "model"
    build_scripted_model(tiny_model_dir, model, magnifier.url, script(protocol))
    service = start_policy(tmp, magnifier.url, str(model), {"MAGSRL_ZOOM_PROTOCOL": protocol})
    yield protocol, service, model
    service.supervisor.stop()


def expected_crop(model_dir: Path) -> tuple[int, int, int, int]:
    from magsrl.models.loading import load_processor

    size = (640, 427)
    low, high = load_processor(model_dir).pixel_bounds()
    frame = resized_size(*size, FAMILIES["qwen2_5_vl"], min_pixels=low, max_pixels=high)
    return to_original_crop(
        BOX, 0, [original_slot(*size)], Convention.QWEN2_5_VL, lambda w, h: frame, size, 28
    )


def test_answer_runs_the_two_round_loop(
    trajectory_policy: Trajectory, tiny_model_dir: Path
) -> None:
    protocol, policy, _ = trajectory_policy
    resp = httpx.post(
        f"{policy.url}/answer",
        timeout=120,
        files={"image": ("rocket.png", rocket_png(), "image/png")},
        data={"question": QUESTION, "return_crops": "b64"},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["answer"] == "red"
    assert len(body["rounds"]) == 2
    assert body["rounds"][0]["text"] == ROUND1[protocol]
    assert body["rounds"][1]["text"] == ROUND2
    (zoom,) = body["rounds"][0]["zooms"]
    assert zoom["error"] is None
    assert tuple(zoom["box"]) == expected_crop(tiny_model_dir)
    crop = zoom["crop"]
    assert crop["box"] == zoom["box"] and crop["method"] == "sr" and crop["model"]
    image = Image.open(io.BytesIO(base64.b64decode(crop["b64"])))
    assert image.size == (crop["width"], crop["height"])
    x1, y1, x2, y2 = zoom["box"]
    assert crop["width"] > (x2 - x1)  # magnified, not just cut out
    # The crop shows the requested region of the original.
    region = Image.fromarray(photo("rocket")[y1:y2, x1:x2]).resize(image.size)
    diff = np.abs(np.asarray(image.convert("RGB"), float) - np.asarray(region, float)).mean()
    assert diff < 12
    timing = body["timing_ms"]
    assert timing["model"] > 0 and timing["magnifier"] > 0 and timing["overhead"] >= 0
    assert body["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("upscale", ["bicubic", "crop"])
def test_upscale_ablation_is_one_flag(trajectory_policy: Trajectory, upscale: str) -> None:
    _, policy, _ = trajectory_policy
    resp = httpx.post(
        f"{policy.url}/answer",
        timeout=120,
        json={
            "image": {"b64": base64.b64encode(rocket_png()).decode()},
            "question": QUESTION,
            "upscale": upscale,
        },
    )
    assert resp.status_code == 200, resp.text
    crop = resp.json()["rounds"][0]["zooms"][0]["crop"]
    assert crop["method"] == upscale
    assert crop["b64"] is None  # by reference unless asked for


def test_zoom_off_answers_in_one_round(trajectory_policy: Trajectory) -> None:
    _, policy, _ = trajectory_policy
    resp = httpx.post(
        f"{policy.url}/answer",
        timeout=120,
        json={
            "image": {"b64": base64.b64encode(rocket_png()).decode()},
            "question": QUESTION,
            "zoom": "off",
            "max_tokens": 16,
        },
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert len(body["rounds"]) == 1 and body["rounds"][0]["zooms"] == []
    assert body["timing_ms"]["magnifier"] == 0


def test_image_by_magnifier_id(trajectory_policy: Trajectory, magnifier: RunningService) -> None:
    _, policy, _ = trajectory_policy
    image_id = httpx.post(f"{magnifier.url}/v1/images", content=rocket_png()).json()["image_id"]
    resp = httpx.post(
        f"{policy.url}/answer", timeout=120, json={"image": {"id": image_id}, "question": QUESTION}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["answer"] == "red"


def test_hermes_tool_calls_reach_the_sdk(
    trajectory_policy: Trajectory, magnifier: RunningService
) -> None:
    protocol, policy, _ = trajectory_policy
    sdk = openai.OpenAI(base_url=f"{policy.url}/v1", api_key="unused", max_retries=0)
    model = sdk.models.list().data[0].id
    # Tag-form zooms reach an SDK client as zoom tool calls too.
    first, _ = asyncio.run(conversation(Path(model), magnifier.url, script(protocol)))
    messages = [_wire(m) for m in first]
    resp = sdk.chat.completions.create(
        model=model, messages=messages, tools=[zoom_tool()], temperature=0, max_tokens=64
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "zoom"
    import json

    assert json.loads(call.function.arguments)["bbox_2d"] == BOX
    stream = sdk.chat.completions.create(
        model=model,
        messages=messages,
        tools=[zoom_tool()],
        temperature=0,
        max_tokens=64,
        stream=True,
    )
    deltas = [c.choices[0].delta for c in stream if c.choices]
    streamed = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert [tc.function.name for tc in streamed] == ["zoom"]
    assert streamed[0].id == call.id


def _wire(message: dict) -> dict:
    content = message["content"]
    if isinstance(content, list):
        content = [
            {
                "type": "image_url",
                "image_url": {
                    "url": "data:image/png;base64,"
                    + base64.b64encode(png_bytes(np.asarray(p["image"]))).decode()
                },
            }
            if p["type"] == "image"
            else p
            for p in content
        ]
    return {**message, "content": content}


@pytest.mark.parametrize("mode", ["error", "continue"])
def test_magnifier_down(trajectory_policy: Trajectory, tmp_path: Path, mode: str) -> None:
    """A magnifier that is down is a 503 that says so, or, when configured, the loop goes on
    without zoom and the response says why."""
    _, _, model = trajectory_policy
    dead = f"http://127.0.0.1:{free_port()}"
    service = start_policy(tmp_path, dead, str(model), {"MAGSRL_MAGNIFIER_DOWN": mode})
    try:
        resp = httpx.post(
            f"{service.url}/answer",
            timeout=120,
            json={"image": {"b64": base64.b64encode(rocket_png()).decode()}, "question": QUESTION},
        )
    finally:
        service.supervisor.stop()
    if mode == "error":
        assert resp.status_code == 503, resp.text
        assert "magnifier" in resp.json()["error"]["message"]
    else:
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert "magnifier is unavailable" in body["zoom_skipped"]
        assert len(body["rounds"]) == 2
        assert body["rounds"][0]["zooms"][0]["crop"] is None
