"""The options of one zoom episode, declared once and embedded as they are wherever an
episode is described: ``/answer``'s body (``AnswerRequest``), the rollout job
(``RolloutJob``), the run config's ``episode`` section and the eval config.

Two models:
- ``EpisodeOptions``: what a caller may ask for. The crop and protocol fields may be left
  unset (None), which means "as the policy serves": a rollout then sees the same crops,
  placement and protocol as ``/answer`` does.
- ``ServedOptions``: those same fields with the values one policy serves (its settings);
  ``GET /v1/policy/info`` reports them, and ``EpisodeOptions.resolve`` fills the gaps.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, Field

from magsrl.proto.vocab import (
    CropPlacement,
    ImageFormat,
    MagnifierDown,
    Protocol,
    UpscaleMethod,
    ZoomMode,
)

MAX_ROUNDS_LIMIT = 12  # Mini-o3 answers within 12 turns at test time
MAX_ZOOMS_PER_ROUND = 16
MIN_CROP_PIXELS = 64 * 64
DEFAULT_CROP_PIXELS = 512 * 512

# The fields a policy serves (its settings) and an episode may override.
SERVED_FIELDS = (
    "protocol",
    "max_zooms_per_round",
    "crop_max_pixels",
    "crop_format",
    "crop_quality",
    "crop_in",
    "magnifier_down",
)


class ServedOptions(BaseModel):
    """The episode settings one policy serves; its defaults are the policy's defaults."""

    protocol: Protocol = Field("tags", description="How the model asks for a zoom.")
    max_zooms_per_round: int = Field(
        4, ge=1, le=MAX_ZOOMS_PER_ROUND, description="Zooms served per model turn."
    )
    crop_max_pixels: int = Field(
        DEFAULT_CROP_PIXELS, ge=MIN_CROP_PIXELS, description="Pixel budget of each crop."
    )
    crop_format: ImageFormat = Field(
        "jpeg",
        description="Crop encoding from the magnifier (jpeg q95 is ~15x faster to encode "
        "than png; see docs/benchmarks.md).",
    )
    crop_quality: int = Field(95, ge=1, le=100, description="For jpeg and webp crops.")
    crop_in: CropPlacement = Field(
        "tool",
        description="Where crops go back to the model: the tool message, or a following "
        "user message for templates that cannot render images in tool messages.",
    )
    magnifier_down: MagnifierDown = Field(
        "error", description="When the magnifier is unreachable: 503, or answer without zoom."
    )


class EpisodeOptions(BaseModel):
    """How one zoom episode runs. Unset crop and protocol fields take the policy's."""

    zoom: ZoomMode = Field(
        "auto",
        description="auto: the model decides; off: one round, no zoom; force: round 1 "
        "must name a region (MGPO's grounding turn).",
    )
    upscale: UpscaleMethod = Field(
        "sr", description="How the magnifier enlarges crops: the paper's ablation."
    )
    max_rounds: int = Field(
        2,
        ge=1,
        le=MAX_ROUNDS_LIMIT,
        description="Model turns, the answering turn included; when left unset, the "
        "protocol's own turn limit (2 for magsrl's, 5 DeepEyes, 12 Mini-o3).",
    )
    protocol: Protocol | None = Field(
        None,
        description="A zoom protocol of GET /v1/protocols (tags, tools, deepeyes, mini_o3, "
        "mgpo, qwen3_vl_thinking, chain_of_focus) or auto (by the model's name); the policy's "
        "zoom_protocol when unset.",
    )
    max_zooms_per_round: int | None = Field(
        None, ge=1, le=MAX_ZOOMS_PER_ROUND, description="The policy's when unset."
    )
    crop_max_pixels: int | None = Field(
        None, ge=MIN_CROP_PIXELS, description="Pixel budget of each crop; the policy's if unset."
    )
    crop_format: ImageFormat | None = Field(None, description="The policy's when unset.")
    crop_quality: int | None = Field(None, ge=1, le=100, description="The policy's when unset.")
    crop_in: CropPlacement | None = Field(None, description="The policy's when unset.")
    magnifier_down: MagnifierDown | None = Field(None, description="The policy's when unset.")
    # sampling, per model turn
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling.")
    max_tokens: int | None = Field(
        None, ge=1, le=32768, description="Per round; the engine's default when unset."
    )
    seed: int | None = Field(
        None,
        ge=-(2**63),
        le=2**63 - 1,
        description="Makes sampling repeatable (int64, as torch and vLLM take it).",
    )

    def resolve(self, served: ServedOptions) -> Self:
        """These options with every unset served field taken from ``served``."""
        missing = {
            name: getattr(served, name) for name in SERVED_FIELDS if getattr(self, name) is None
        }
        return self.model_copy(update=missing)

    def served(self) -> ServedOptions:
        """The served fields of resolved options (raises when one is still unset)."""
        values = {name: getattr(self, name) for name in SERVED_FIELDS}
        unset = [name for name, value in values.items() if value is None]
        if unset:
            raise ValueError(f"episode options not resolved: {', '.join(unset)} unset")
        return ServedOptions(**values)

    def episode_options(self) -> EpisodeOptions:
        """Only the episode's own fields, from a model that embeds them (an AnswerRequest,
        a RolloutJob)."""
        # exclude_unset: which fields the caller left unset still shows (max_rounds then
        # takes the protocol's turn limit).
        return EpisodeOptions.model_validate(
            self.model_dump(include=set(EpisodeOptions.model_fields), exclude_unset=True)
        )
