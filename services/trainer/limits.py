"""The limits a run shares with the policy's engine, taken from the policy (``GET
/v1/limits``) so the learner cuts images into the tokens the sampler saw.

Without this, a trainer with no pixel budget of its own used the checkpoint's processor limit
(12.8 MP for Qwen2.5-VL) while vLLM resized to 1,003,520 px: on a 4K photo the learner
expected 10,549 image tokens where the sampler saw 1,222, and boxes mapped to another frame.
A trainer setting that disagrees with the policy's is refused, with both values named.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from magsrl.clients.policy import PolicyClient, PolicyError
from magsrl.proto.limits import EngineLimits
from magsrl.proto.rollout import RolloutJob
from magsrl.trainer.config import TrainerSettings, WorkerSettings

log = logging.getLogger("magsrl.trainer.limits")


class LimitsDisagree(ValueError):
    """The trainer's settings and the policy's engine disagree on a shared limit."""


@dataclass(frozen=True)
class RunLimits:
    min_pixels: int | None
    max_pixels: int | None
    max_images: int | None
    source: str  # "policy" or "settings"


async def policy_limits(policy: PolicyClient) -> EngineLimits | None:
    """The policy's limits, or None when it cannot say (an older policy, or unreachable:
    the run then fails later at its first rollout with its own message)."""
    try:
        return await policy.limits()
    except PolicyError as exc:
        log.warning("could not ask the policy for its limits: %s", exc.message)
        return None


def agree(settings: TrainerSettings, reported: EngineLimits | None) -> RunLimits:
    """The limits for a run: the policy's, checked against any the trainer sets itself."""
    if reported is None:
        return RunLimits(
            settings.min_image_pixels, settings.max_image_pixels_model, settings.max_images,
            "settings",
        )  # fmt: skip
    pairs = [
        ("MAGSRL_MAX_IMAGE_PIXELS_MODEL", settings.max_image_pixels_model,
         reported.max_image_pixels_model),
        ("MAGSRL_MIN_IMAGE_PIXELS", settings.min_image_pixels, reported.min_image_pixels),
        ("MAGSRL_MAX_IMAGES", settings.max_images, reported.max_images),
    ]  # fmt: skip
    for name, mine, theirs in pairs:
        if mine is not None and mine != theirs:
            raise LimitsDisagree(
                f"the trainer has {name}={mine} but the policy's engine uses {theirs}: the "
                "learner would cut images into other tokens than the sampler saw. Set it once "
                "in .env (compose.yaml passes it to every service; docs/deploy.md), or unset "
                "it in the trainer to take the policy's"
            )
    return RunLimits(
        reported.min_image_pixels,
        reported.max_image_pixels_model,
        reported.max_images,
        "policy",
    )


def job_disagreement(settings: WorkerSettings, job: RolloutJob) -> str | None:
    """Why a worker must refuse ``job``: a limit it was started with that the job's (the
    policy's, through the trainer) contradicts. None when they agree or one side is unset."""
    pairs = [
        ("MAGSRL_MAX_IMAGE_PIXELS_MODEL", settings.max_image_pixels_model, job.frame_max_pixels),
        ("MAGSRL_MAX_IMAGES", settings.max_images, job.max_images),
    ]
    for name, mine, theirs in pairs:
        if mine is not None and theirs is not None and mine != theirs:
            return (
                f"this worker has {name}={mine} but the job was made for {theirs} (the "
                "policy's engine): set it once in .env for every service (docs/deploy.md)"
            )
    return None
