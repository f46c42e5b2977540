"""Wire models of the policy's ``POST /answer``: shared by the policy, the eval harness and the
trainer's rollout workers."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from magsrl.proto.episode import MAX_ROUNDS_LIMIT, EpisodeOptions, ServedOptions
from magsrl.proto.images import ImageRef
from magsrl.proto.vocab import ReturnCrops

__all__ = [
    "MAX_ROUNDS_LIMIT",
    "AnswerRequest",
    "AnswerResponse",
    "CropRef",
    "LoadWeightsRequest",
    "PolicyInfo",
    "Round",
    "WeightsStatus",
    "Zoom",
]

MAX_OPTIONS = 26  # letters A-Z


class AnswerRequest(EpisodeOptions):
    """The question, its image, and the episode's options (``EpisodeOptions``, embedded as
    they are: ``zoom``, ``upscale``, ``max_rounds``, the sampling fields, and the crop and
    protocol fields that default to the policy's settings)."""

    image: ImageRef
    question: str = Field(min_length=1, max_length=8000)
    options: list[Annotated[str, Field(max_length=2000)]] | None = Field(
        None,
        min_length=2,
        max_length=MAX_OPTIONS,
        description="Multiple-choice options; the answer is normalised to a letter.",
    )
    model: str | None = Field(None, description="An adapter name; the base model by default.")
    return_crops: ReturnCrops = Field(
        "ref", description="ref: crops by box and size only; b64: include the image data."
    )


class CropRef(BaseModel):
    box: list[int] = Field(description="In original-image pixels.")
    width: int
    height: int
    method: str
    model: str | None = None
    b64: str | None = None
    format: str | None = None


class Zoom(BaseModel):
    box: list[int] | None = Field(description="The crop in original pixels; null on error.")
    img_idx: int = 0
    label: str | None = None
    crop: CropRef | None = None
    error: str | None = Field(
        None, description="Why the request was unusable, as told to the model."
    )


class Round(BaseModel):
    text: str
    zooms: list[Zoom] = Field(default_factory=list)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class AnswerResponse(BaseModel):
    answer: str
    raw_answer: str = Field(description="The answer text before option normalisation.")
    rounds: list[Round]
    model: str
    usage: Usage
    timing_ms: dict[str, float] = Field(
        description="total, model (engine time), magnifier, queue (time waiting in the "
        "engine's batch queue; only the hf engine can see it: an OpenAI upstream queues "
        "inside its own server, so there the key is absent and that wait is in model), and "
        "overhead (the rest)."
    )
    zoom_skipped: str | None = Field(
        None,
        description="Set when zooms were requested but the magnifier was unavailable "
        "and the loop went on without them.",
    )


class PolicyInfo(BaseModel):
    """``GET /v1/policy/info``: what a policy serves, so that a rollout worker or an eval
    runs episodes exactly as ``/answer`` does."""

    model: str = Field(description="The base model's name, as /v1/models lists it first.")
    family: str | None = Field(
        description="qwen2_5_vl or qwen3_vl, from the model's config.json; null while loading."
    )
    convention: str | None = Field(description="The family's box convention.")
    served: ServedOptions = Field(description="The episode settings a request may leave unset.")
    adapters: list[str] = Field(default_factory=list, description="Loaded LoRA adapters.")


class LoadWeightsRequest(BaseModel):
    """``POST /v1/weights`` (magsrl's, not OpenAI's): the base model's weights from a folder."""

    path: str = Field(
        min_length=1,
        max_length=4096,
        description="A model folder (config.json and safetensors) under the policy's runs_dir "
        "or weights_roots, e.g. a full fine-tuning version the trainer saved.",
    )
    name: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="A model name that serves exactly these weights (e.g. <run>-v<n>): a "
        "request for it fails once other weights are loaded. The base name serves them too.",
    )


class WeightsStatus(BaseModel):
    """``GET /v1/weights``: what the base model name serves, and whether it can change."""

    model: str = Field(description="The base model name.")
    name: str | None = Field(description="The name of the loaded weights; null: the original.")
    path: str | None = Field(description="Their folder; null: the served checkpoint's own.")
    reloadable: bool = Field(description="Whether this engine can load weights while serving.")
    reason: str | None = Field(None, description="Why not, and what to do instead.")
    roots: list[str] = Field(description="Folders whose model folders it may load.")
