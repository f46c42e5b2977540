"""Eval settings: defaults from the environment (prefix ``MAGSRL_``). ``EvalConfig``, the
validated description of one eval run that the CLI builds and the manifest records, is a wire
model in ``magsrl.proto.eval`` (re-exported here)."""

from __future__ import annotations

from pydantic import Field

from magsrl.common.settings import ServiceSettings
from magsrl.proto.eval import SYNTHETIC, EvalConfig

__all__ = ["MANIFEST_FIELDS", "SYNTHETIC", "EvalConfig", "EvalSettings"]


class EvalSettings(ServiceSettings):
    """Where the services are (``policy_url``, ``magnifier_url``, ``api_key``: shared with
    the services), and the knobs of the harness that a run rarely changes."""

    eval_timeout_s: float = Field(600.0, gt=0, description="One /answer call, all rounds.")
    eval_retries: int = Field(
        4, ge=0, description="Retries of a sample when the backend is down or overloaded."
    )
    eval_retry_backoff_s: float = Field(2.0, ge=0, description="First wait; doubles each time.")
    bootstrap_resamples: int = Field(10_000, ge=100, description="For every interval.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Of every interval.")
    thumb_max_pixels: int = Field(
        1024 * 768, ge=64 * 64, description="Pixel budget of the copies the trace viewer shows."
    )
    max_image_pixels: int = Field(64_000_000, ge=1, description="Largest image decoded.")
    thumb_quality: int = Field(85, ge=1, le=100, description="JPEG quality of those copies.")
    synthetic_n: int = Field(100, ge=1, description="Scenes made for `synthetic` with no --limit.")
    policy_family: str | None = Field(
        None,
        description="The openai backend: the model's family (qwen2_5_vl, qwen3_vl) when the "
        "endpoint does not report it. Never guessed from the model's name.",
    )


# What makes two runs' results comparable: a resume must agree on all of them.
MANIFEST_FIELDS = (
    "dataset",
    "kind",
    "split",
    "limit",
    "seed",
    "backend",
    "model",
    "protocol",
    "max_rounds",
    "temperature",
    "max_tokens",
    "synthetic_size",
)
