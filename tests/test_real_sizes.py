"""Real photo sizes and both model families, end to end, with the production pixel budget.

A 4000x3000 JPEG goes through ``/answer``, through rollouts (a real policy process, the
rollout worker's ``run_job`` and a real magnifier process) and through a learner step, with
the policy started as compose.yaml starts it (``MAGSRL_MAX_IMAGE_PIXELS_MODEL=1003520``) and
the trainer given no budget of its own: it must take the policy's. The same runs for a
Qwen3-VL tiny model (``magsrl make-tiny-model --family qwen3_vl``).

Pins issue 13, point 1: the trainer used the checkpoint's processor limit while the engine
resized to 1,003,520 px, so the learner cut a 4K photo into other tokens than the sampler saw
(and refused every image over about 1 MP).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from magsrl.clients.magnifier import MagnifierClient
from magsrl.data.sample import Sample
from magsrl.engines.settings import EngineSettings
from magsrl.proto.limits import EngineLimits
from magsrl.proto.rollout import RolloutJob, RolloutResult
from magsrl.trainer.config import TrainerSettings
from magsrl.trainer.grpo import group_advantages
from magsrl.trainer.learner import Learner
from magsrl.trainer.limits import LimitsDisagree, agree
from magsrl.trainer.run_config import RunConfig
from magsrl.trainer.trajectory import decode_images
from magsrl.trainer.worker import RemotePolicy, run_job
from magsrl.zoom.families import get_family, resized_size
from tests.conftest import RunningService, photo, start_policy, start_service

pytestmark = pytest.mark.slow

BUDGET = 1_003_520  # compose.yaml's MAGSRL_MAX_IMAGE_PIXELS_MODEL default: 1280 x 28 x 28
ORIGINAL = (4000, 3000)
QUESTION = "What is in the picture?"
AGREEMENT = 1e-4


def big_jpeg() -> bytes:
    image = Image.fromarray(photo("rocket")).resize(ORIGINAL, Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return big_jpeg()


@pytest.fixture(scope="module")
def big_magnifier(
    tmp_path_factory: pytest.TempPathFactory, weights_dir: Path
) -> Iterator[RunningService]:
    """A magnifier that takes 12 MP originals (the shared test one is capped at 4 MP)."""
    service = start_service(
        "magnifier",
        tmp_path_factory.mktemp("big-magnifier"),
        {
            "MAGSRL_WEIGHTS_DIR": str(weights_dir),
            "MAGSRL_PRELOAD": "",
            "MAGSRL_TORCH_THREADS": "1",
        },
    )
    yield service
    service.supervisor.stop()


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def family_policy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    big_magnifier: RunningService,
) -> Iterator[tuple[str, Path, RunningService]]:
    from magsrl.models.tiny import ensure_tiny_model

    family = request.param
    model = ensure_tiny_model(family)
    service = start_policy(
        tmp_path_factory.mktemp(f"policy-{family}"),
        big_magnifier.url,
        str(model),
        {"MAGSRL_MAX_IMAGE_PIXELS_MODEL": str(BUDGET), "MAGSRL_MAX_IMAGES": "5"},
    )
    yield family, model, service
    service.supervisor.stop()


def config() -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "run",
            "model": "tiny",
            "dataset": "unused",
            "grpo": {"group_size": 2, "prompts_per_step": 1, "micro_batch_size": 2},
            "lora": {"dropout": 0.0},
        }
    )


def test_policy_reports_the_budget_and_the_trainer_takes_it(
    family_policy: tuple[str, Path, RunningService],
) -> None:
    """The trainer's limits come from the policy's engine; a trainer setting that disagrees
    is refused with both values, instead of a learner that cuts images differently."""
    _, _, policy = family_policy
    with policy.client() as http:
        resp = http.get("/v1/limits")
    assert resp.status_code == 200, resp.text
    limits = EngineLimits.model_validate(resp.json())
    assert limits.max_image_pixels_model == BUDGET and limits.max_images == 5
    taken = agree(TrainerSettings(), limits)  # type: ignore[call-arg]
    assert (taken.max_pixels, taken.max_images, taken.source) == (BUDGET, 5, "policy")
    with pytest.raises(LimitsDisagree, match=r"12845056.*1003520"):
        agree(TrainerSettings(max_image_pixels_model=12_845_056), limits)  # type: ignore[call-arg]


def test_a_4k_jpeg_through_answer(
    family_policy: tuple[str, Path, RunningService], jpeg: bytes
) -> None:
    """/answer decodes the 12 MP JPEG to the model's view under the budget: the prompt holds
    about 1,000-1,300 image tokens (not the 16 of a thumbnail, nor 10,000+ of 12.8 MP)."""
    family, _, policy = family_policy
    frame = resized_size(*ORIGINAL, get_family(family), max_pixels=BUDGET)
    tokens = frame[0] * frame[1] // get_family(family).factor ** 2
    with policy.client(timeout=300.0) as http:
        resp = http.post(
            "/answer",
            files={"image": ("big.jpg", jpeg, "image/jpeg")},
            data={"question": QUESTION, "max_tokens": "8", "zoom": "off"},
        )
    assert resp.status_code == 200, resp.text
    prompt_tokens = resp.json()["usage"]["prompt_tokens"]
    assert tokens < prompt_tokens < tokens + 200


async def _rollouts(
    policy_url: str,
    magnifier_url: str,
    jpeg: bytes,
    limits: EngineLimits,
    eos_id: int,
    family: str,
) -> list[RolloutResult]:
    magnifier = MagnifierClient(magnifier_url)
    async with httpx.AsyncClient() as http:
        names = [m["id"] for m in (await http.get(f"{policy_url}/v1/models")).json()["data"]]
    remote = RemotePolicy(EngineSettings(policy_model=names[0], upstream_url=f"{policy_url}/v1"))
    try:
        # The family comes from the policy's model card, as a worker learns it.
        assert await remote.ready() is None
        assert remote.family.name == family
        info = await magnifier.upload(jpeg)
        sample = Sample(id="s", image="big.jpg", question=QUESTION, answer="rocket")
        results = []
        for g in range(2):
            job = RolloutJob(
                job_id=f"run:0:0:{g}",
                run_id="run",
                step=0,
                sample_index=0,
                group_index=g,
                version=0,
                policy_model=None,
                sample=sample,
                image_id=info.image_id,
                protocol="tools",
                max_rounds=2,
                max_tokens=12,
                temperature=1.0,
                seed=g,
                frame_min_pixels=limits.min_image_pixels,
                frame_max_pixels=limits.max_image_pixels_model,
                max_images=limits.max_images,
                eos_token_id=eos_id,
                rewards={"accuracy": 1.0},
            )
            results.append(await run_job(job, remote, magnifier, "test"))
        return results
    finally:
        await magnifier.close()
        await remote.close()


def test_rollouts_and_a_learner_step_on_a_4k_jpeg(
    family_policy: tuple[str, Path, RunningService],
    big_magnifier: RunningService,
    jpeg: bytes,
) -> None:
    """Rollouts of the 4K JPEG carry the model's view (not 12 MP), and the learner, built with
    the limits the trainer takes from the policy, scores them as the sampler did: no
    token-count error, log-probs in agreement, and no re-render drift."""
    family, model, policy = family_policy
    with policy.client() as http:
        limits = EngineLimits.model_validate(http.get("/v1/limits").json())
    run = agree(TrainerSettings(), limits)  # type: ignore[call-arg]
    learner = Learner(model, config(), "cpu", min_pixels=run.min_pixels, max_pixels=run.max_pixels)
    results = asyncio.run(
        _rollouts(policy.url, big_magnifier.url, jpeg, limits, int(learner.eos_id), family)
    )
    for result in results:
        assert result.error is None, result.error
        assert result.retokenize_mismatch == 0
        original = decode_images(result.images)[0]
        assert original.size == resized_size(*ORIGINAL, get_family(family), max_pixels=BUDGET)
    metrics = learner.step(results, group_advantages(torch.tensor([1.0, 0.0]), 2))
    assert metrics["logprob_diff"] < AGREEMENT
    assert np.isfinite(metrics["loss"])
