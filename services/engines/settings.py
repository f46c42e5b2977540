"""What an engine needs to know, and nothing more: the policy fills it from its settings
(``PolicySettings.engine_settings``), the rollout worker and eval build it directly. Engines
import this, never the policy's settings, so they sit below every service."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class EngineSettings(BaseModel):
    policy_model: str = Field(
        "tiny", description="A Hugging Face id, a local path, or `tiny` (the offline tiny model)."
    )
    served_model_name: str | None = Field(
        None, description="The name clients use for the base model (default: policy_model)."
    )
    family: str | None = Field(
        None,
        description="The model family (qwen2_5_vl, qwen3_vl) when it cannot be learned: the "
        "hf engine reads config.json; the openai engine asks the upstream, and needs this "
        "only when the upstream does not say.",
    )
    # the openai engine
    upstream_url: str = Field("http://127.0.0.1:8100/v1", description="Upstream /v1 base URL.")
    upstream_urls: list[str] = Field(
        default_factory=list,
        description="Several upstream /v1 base URLs (engines/upstream_pool.py routes each "
        "conversation to one); empty: upstream_url alone.",
    )
    upstream_retry_s: float = Field(
        5.0, gt=0, le=600, description="How long an unreachable upstream is skipped."
    )
    upstream_sticky_slack: int = Field(
        8,
        ge=0,
        description="How many more requests in flight a conversation's upstream may have than "
        "the least loaded one before the conversation moves (and loses its prefix cache).",
    )
    image_threads: int = Field(
        4, ge=1, le=64, description="Threads that encode images for the upstream, off the loop."
    )
    upstream_api_key: SecretStr | None = Field(None, description="Bearer key for the upstream.")
    upstream_timeout_s: float = Field(600.0, gt=0)
    upstream_logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = Field(
        "processed_logprobs",
        description="The log-probs mode the upstream must run with (vLLM --logprobs-mode); "
        "checked at start (engines/logprobs_mode.py).",
    )
    # the hf engine
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    torch_threads: int | None = Field(None, ge=1)
    min_image_pixels: int | None = Field(None, ge=1, description="Processor lower pixel bound.")
    max_image_pixels_model: int | None = Field(
        None, ge=1, description="Processor pixel budget per image (the model's view)."
    )
    max_context: int | None = Field(None, ge=64)
    default_max_tokens: int = Field(512, ge=1)
    max_adapters: int = Field(8, ge=1)
    batch_wait_ms: float = Field(0.0, ge=0)
    max_batch: int = Field(16, ge=1)

    def upstreams(self) -> list[str]:
        """The upstream /v1 base URLs, in order: ``upstream_urls``, else ``upstream_url``."""
        return [u.rstrip("/") for u in self.upstream_urls] or [self.upstream_url.rstrip("/")]
