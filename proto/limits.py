"""The limits the model engine, the policy, the trainer and the rollout workers must agree
on, as the policy reports them (``GET /v1/limits``). One source: the policy's settings
(``MAGSRL_MAX_IMAGE_PIXELS_MODEL``, ``MAGSRL_MAX_IMAGES``, ``MAGSRL_MAX_CONTEXT``), set once in
``.env`` and handed to every service by ``compose.yaml`` (docs/deploy.md)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class EngineLimits(BaseModel):
    min_image_pixels: int = Field(
        ge=1, description="The processor's lower pixel bound per image (the model's view)."
    )
    max_image_pixels_model: int = Field(
        ge=1,
        description="The processor's pixel budget per image: every image is resized into it "
        "before it becomes tokens (vLLM --mm-processor-kwargs max_pixels). Boxes in "
        "Qwen2.5-VL's frame and the learner's image tokens depend on it.",
    )
    max_images: int = Field(
        ge=1, description="Most images in one prompt (vLLM --limit-mm-per-prompt)."
    )
    max_context: int | None = Field(
        None, ge=1, description="Context limit in tokens (vLLM --max-model-len); None: unknown."
    )
