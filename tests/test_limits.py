"""The limits shared by the engine, the policy, the trainer and the rollout workers: one
source (the policy's settings, reported at ``GET /v1/limits``), and a refusal with a message
wherever two of them disagree (docs/deploy.md, "Limits shared by the engine and magsrl")."""

from __future__ import annotations

import pytest

from magsrl.data.sample import Sample
from magsrl.engines.upstream_limits import upstream_disagreement
from magsrl.policy.config import PolicySettings
from magsrl.proto.limits import EngineLimits
from magsrl.proto.rollout import RolloutJob
from magsrl.trainer.config import TrainerSettings, WorkerSettings
from magsrl.trainer.limits import LimitsDisagree, agree, job_disagreement

REPORTED = EngineLimits(min_image_pixels=3136, max_image_pixels_model=1_003_520, max_images=5)


def vllm_models(max_model_len: int | None) -> dict[str, object]:
    """A vLLM ``/v1/models`` body: each card reports the engine's max_model_len."""
    card: dict[str, object] = {"id": "Qwen/Qwen2.5-VL-7B-Instruct", "object": "model"}
    if max_model_len is not None:
        card["max_model_len"] = max_model_len
    return {"object": "list", "data": [card]}


def test_trainer_takes_the_policys_limits() -> None:
    """Bug: with no MAGSRL_MAX_IMAGE_PIXELS_MODEL of its own, the trainer used the
    checkpoint's processor limit (12.8 MP for Qwen2.5-VL) instead of the engine's 1 MP."""
    limits = agree(TrainerSettings(), REPORTED)  # type: ignore[call-arg]
    assert (limits.min_pixels, limits.max_pixels, limits.max_images) == (3136, 1_003_520, 5)
    assert limits.source == "policy"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        pytest.param("max_image_pixels_model", 12_845_056, id="pixel-budget"),
        pytest.param("max_images", 8, id="images-per-prompt"),
    ],
)
def test_trainer_refuses_a_limit_that_disagrees(setting: str, value: int) -> None:
    """A trainer setting that contradicts the policy's engine fails the run with both values,
    rather than training on images cut into other tokens."""
    settings = TrainerSettings(**{setting: value})  # type: ignore[arg-type]
    with pytest.raises(LimitsDisagree) as caught:
        agree(settings, REPORTED)
    message = str(caught.value)
    assert str(value) in message and "docs/deploy.md" in message


def test_trainer_without_a_policy_report_keeps_its_settings() -> None:
    limits = agree(TrainerSettings(max_image_pixels_model=802_816), None)  # type: ignore[call-arg]
    assert (limits.max_pixels, limits.source) == (802_816, "settings")


def test_policy_refuses_an_engine_with_another_context() -> None:
    """vLLM reports max_model_len; a policy set for another context would admit prompts the
    engine rejects (or refuse ones it takes): /ready says why."""
    settings = PolicySettings(policy_model="Qwen/Qwen2.5-VL-7B-Instruct", max_context=16384)  # type: ignore[call-arg]
    served = "Qwen/Qwen2.5-VL-7B-Instruct"
    problem = upstream_disagreement(vllm_models(8192)["data"], served, settings.max_context)
    assert problem is not None and "8192" in problem and "16384" in problem
    assert upstream_disagreement(vllm_models(16384)["data"], served, settings.max_context) is None
    assert (
        upstream_disagreement(vllm_models(None)["data"], served, settings.max_context) is None
    )  # not reported
    unset = PolicySettings(policy_model=served)  # type: ignore[call-arg]
    assert upstream_disagreement(vllm_models(8192)["data"], served, unset.max_context) is None


def job(**limits: int | None) -> RolloutJob:
    return RolloutJob(
        job_id="r:0:0:0",
        run_id="r",
        step=0,
        sample_index=0,
        group_index=0,
        version=0,
        policy_model=None,
        sample=Sample(id="s", image="x.png", question="q", answer="a"),
        image_id="abc",
        eos_token_id=1,
        rewards={"accuracy": 1.0},
        **limits,  # type: ignore[arg-type]
    )


def test_worker_refuses_a_job_made_for_another_engine() -> None:
    settings = WorkerSettings(max_image_pixels_model=1_003_520, max_images=5)  # type: ignore[call-arg]
    assert job_disagreement(settings, job(frame_max_pixels=1_003_520, max_images=5)) is None
    problem = job_disagreement(settings, job(frame_max_pixels=12_845_056, max_images=5))
    assert problem is not None and "12845056" in problem
    problem = job_disagreement(settings, job(frame_max_pixels=1_003_520, max_images=3))
    assert problem is not None and "MAGSRL_MAX_IMAGES" in problem
    assert job_disagreement(WorkerSettings(), job(frame_max_pixels=1, max_images=1)) is None  # type: ignore[call-arg]
