"""Policy settings: one validated place, environment prefix ``MAGSRL_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from magsrl.common.settings import CommaList, ServiceSettings, default_cache_dir, split_comma_list
from magsrl.engines.settings import EngineSettings
from magsrl.proto.episode import (
    DEFAULT_CROP_PIXELS,
    MAX_ZOOMS_PER_ROUND,
    MIN_CROP_PIXELS,
    SERVED_FIELDS,
    ServedOptions,
)
from magsrl.proto.vocab import CropPlacement, ImageFormat, MagnifierDown, Protocol
from magsrl.zoom.families import FAMILIES

DEFAULT_PORT = 8000


class PolicySettings(ServiceSettings):
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)

    policy_model: str = Field(
        "tiny", description="A Hugging Face id, a local path, or `tiny` (the offline tiny model)."
    )
    served_model_name: str | None = Field(
        None, description="The name clients use for the base model (default: policy_model)."
    )
    policy_family: str | None = Field(
        None,
        description="qwen2_5_vl or qwen3_vl, for an openai upstream that does not report its "
        "model's family (vLLM does, through its model card's root). Never guessed from names.",
    )
    engine: Literal["hf", "openai"] = Field(
        "hf",
        description="hf: transformers in-process; openai: an upstream OpenAI-compatible "
        "server such as the vLLM container.",
    )
    upstream_url: str = Field(
        "http://127.0.0.1:8100/v1", description="The openai engine's upstream base URL."
    )
    upstream_urls: CommaList = Field(
        default_factory=list,
        description="Several upstreams (comma-separated /v1 base URLs), e.g. one vLLM per "
        "GPU: each conversation is routed to one (docs/deploy.md). Empty: upstream_url.",
    )
    upstream_retry_s: float = Field(
        5.0, gt=0, le=600, description="How long an unreachable upstream is skipped."
    )
    upstream_sticky_slack: int = Field(
        8, ge=0, description="Load difference (requests in flight) that moves a conversation."
    )
    image_threads: int = Field(
        4, ge=1, le=64, description="Threads for image decoding and encoding, off the loop."
    )
    upstream_api_key: SecretStr | None = Field(None, description="Bearer key for the upstream.")
    upstream_timeout_s: float = Field(600.0, gt=0)
    upstream_logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = Field(
        "processed_logprobs",
        description="The log-probs the openai engine expects from its upstream (vLLM "
        "--logprobs-mode), checked at start. The learner needs processed_logprobs: the "
        "distribution after temperature that the tokens were sampled from.",
    )

    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on cuda, float32 on CPU."
    )
    torch_threads: int | None = Field(None, ge=1)
    min_image_pixels: int | None = Field(None, ge=1, description="Processor lower pixel bound.")
    max_image_pixels_model: int | None = Field(
        None,
        ge=1,
        description="Processor pixel budget per image (the model's view); "
        "the model's own default when unset.",
    )
    max_context: int | None = Field(
        None, ge=64, description="Context limit in tokens (default: the model config's)."
    )
    default_max_tokens: int = Field(512, ge=1, description="When a request gives none.")
    max_images: int = Field(8, ge=1, le=64, description="Most images in one chat request.")
    max_image_pixels: int = Field(64_000_000, ge=1, description="Largest decoded input image.")
    max_adapters: int = Field(8, ge=1, description="LoRA adapters held at once.")
    runs_dir: Path = Field(
        default_factory=lambda: default_cache_dir() / "runs",
        description="The trainer's run folders (the trainer's MAGSRL_RUNS_DIR): the versions "
        "POST /v1/weights and the adapters POST /v1/adapters may load live under it.",
    )
    weights_roots: CommaList = Field(
        default_factory=list,
        description="More folders POST /v1/weights and /v1/adapters (and vLLM's "
        "/v1/load_lora_adapter) may load from (runs_dir always may).",
    )
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="hf engine: extra wait to gather a batch. 0 batches whatever "
        "queued while the last generate ran, and adds no latency.",
    )
    max_batch: int = Field(16, ge=1, description="hf engine: most sequences per generate.")

    # the zoom loop: what this policy serves (ServedOptions); a request may override each
    crop_in: CropPlacement = Field(
        "tool",
        description="Where crops go back to the model: in the tool message, or in a "
        "following user message for templates that cannot render images "
        "in tool messages.",
    )
    zoom_protocol: Protocol = Field(
        "tags",
        description="The zoom protocol served when a request names none: tags (Mags-RL "
        "<think>/<zoom>/<rethink>/<answer>), tools (Hermes calls to zoom), deepeyes, "
        "mini_o3, mgpo, qwen3_vl_thinking, chain_of_focus, or auto (by the model's name); "
        "GET /v1/protocols lists them. "
        "(MAGSRL_ZOOM_PROTOCOL)",
    )
    magnifier_down: MagnifierDown = Field(
        "error", description="When the magnifier is unreachable: 503, or answer without zoom."
    )
    crop_max_pixels: int = Field(
        DEFAULT_CROP_PIXELS, ge=MIN_CROP_PIXELS, description="Pixel budget of each crop."
    )
    crop_format: ImageFormat = Field(
        "jpeg",
        description="Crop encoding from the magnifier (jpeg q95 is ~15x faster to "
        "encode than png; see docs/benchmarks.md).",
    )
    crop_quality: int = Field(95, ge=1, le=100)
    max_zooms_per_round: int = Field(4, ge=1, le=MAX_ZOOMS_PER_ROUND)
    magnifier_timeout_s: float = Field(60.0, gt=0)

    # the trace viewer (GET /, /v1/viewer/*)
    viewer_samples: str | None = Field(
        None,
        description="A dataset path any loader reads (docs/data.md): the samples the viewer "
        "offers. Unset: a few synthetic scenes made in memory.",
    )
    viewer_samples_limit: int = Field(
        24, ge=1, le=1000, description="Most samples the viewer lists from viewer_samples."
    )
    viewer_crop_format: ImageFormat = Field(
        "png",
        description="Encoding of the viewer's side-by-side crops: lossless by default, so the "
        "comparison shows the upscaler and not the codec.",
    )

    @field_validator("weights_roots", "upstream_urls", mode="before")
    @classmethod
    def _roots(cls, value: object) -> object:
        return split_comma_list(value)

    def allowed_weight_roots(self) -> list[Path]:
        """Folders whose subfolders ``POST /v1/weights`` and ``/v1/adapters`` may load,
        resolved."""
        return [Path(root).resolve() for root in (self.runs_dir, *self.weights_roots)]

    def served_options(self) -> ServedOptions:
        """The episode settings this policy serves: what a request or a rollout job that
        leaves them unset gets (reported by ``GET /v1/policy/info``)."""
        values = {name: getattr(self, name) for name in SERVED_FIELDS if name != "protocol"}
        return ServedOptions(protocol=self.zoom_protocol, **values)

    def engine_settings(self) -> EngineSettings:
        """The part of these settings an engine reads."""
        names = set(EngineSettings.model_fields) - {"family"}
        return EngineSettings(family=self.policy_family, **self.model_dump(include=names))

    @field_validator("policy_family")
    @classmethod
    def _known_family(cls, name: str | None) -> str | None:
        if not name:
            return None  # compose passes an unset variable as ""
        if name not in FAMILIES:
            raise ValueError(f"unknown model family {name!r}; choose from {sorted(FAMILIES)}")
        return name
