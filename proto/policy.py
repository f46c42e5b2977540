"""Wire models of the policy's ``POST /answer``: shared by the policy, the eval harness and the
trainer's rollout workers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from magsrl.proto.images import ImageRef

MAX_OPTIONS = 26  # letters A-Z
MAX_ROUNDS_LIMIT = 8


class AnswerRequest(BaseModel):
    image: ImageRef
    question: str = Field(min_length=1, max_length=8000)
    options: list[Annotated[str, Field(max_length=2000)]] | None = Field(
        None,
        min_length=2,
        max_length=MAX_OPTIONS,
        description="Multiple-choice options; the answer is normalised to a letter.",
    )
    zoom: Literal["auto", "off", "force"] = Field(
        "auto",
        description="auto: the model decides; off: one round, no zoom; force: round 1 "
        "must name a region (MGPO's grounding turn).",
    )
    upscale: Literal["sr", "bicubic", "crop"] = Field(
        "sr", description="How the magnifier enlarges crops: the paper's ablation."
    )
    max_rounds: int = Field(
        2, ge=1, le=MAX_ROUNDS_LIMIT, description="Model turns, the answering turn included."
    )
    model: str | None = Field(None, description="An adapter name; the base model by default.")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=32768, description="Per round.")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # int64, as torch takes it
    return_crops: Literal["ref", "b64"] = Field(
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
        description="total, model (engine time), magnifier, and overhead (the rest)."
    )
    zoom_skipped: str | None = Field(
        None,
        description="Set when zooms were requested but the magnifier was unavailable "
        "and the loop went on without them.",
    )
