"""Eval settings: defaults from the environment (prefix ``MAGSRL_``), and ``EvalConfig``, the
validated description of one eval run that the CLI builds and the manifest records."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

from magsrl.common.settings import ServiceSettings
from magsrl.proto.eval import ArmSpec
from magsrl.proto.policy import MAX_ROUNDS_LIMIT

SYNTHETIC = "synthetic"


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


class EvalConfig(BaseModel):
    """One run. Fields in ``MANIFEST_FIELDS`` must match to resume into the same folder."""

    dataset: str = Field(description="A path a loader reads, or `synthetic`.")
    kind: str = "auto"
    split: str | None = None
    arms: list[ArmSpec] = Field(min_length=1)
    limit: int | None = Field(None, ge=1, description="Samples drawn with the seed; all if unset.")
    seed: int = Field(0, ge=0, description="Sample draw, option order, and bootstrap.")
    concurrency: int = Field(4, ge=1, le=256)
    out: Path
    backend: Literal["policy", "openai"] = "policy"
    policy_url: str = "http://127.0.0.1:8000"
    openai_url: str | None = Field(None, description="The openai backend's /v1 base URL.")
    openai_api_key: SecretStr | None = None
    magnifier_url: str = "http://127.0.0.1:8001"
    api_key: SecretStr | None = Field(None, description="Bearer key of the magsrl services.")
    model: str | None = Field(
        None, description="policy: an adapter (default: base); openai: the served model name."
    )
    protocol: Literal["tags", "tools"] = Field("tags", description="openai backend only.")
    max_rounds: int = Field(2, ge=1, le=MAX_ROUNDS_LIMIT)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    synthetic_size: tuple[int, int] = Field((2048, 1536), description="Canvas of `synthetic`.")

    @field_validator("openai_url")
    @classmethod
    def _v1(cls, url: str | None) -> str | None:
        return url.rstrip("/") if url else url

    def check(self) -> None:
        if self.backend == "openai" and (not self.openai_url or not self.model):
            raise ValueError(
                "the openai backend needs --openai URL (the /v1 base) and --model NAME "
                "(the model that endpoint serves)"
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
