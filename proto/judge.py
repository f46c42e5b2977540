"""Wire models of the judge's ``POST /v1/score`` and ``/v1/score/batch``: shared by the judge,
its client (the curriculum CLI, the trainer's re-scoring) and the JSON Schemas in proto/."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from magsrl.proto.images import ImageRef

Method = Literal["heuristic", "mllm", "pass_rate", "combined"]
Level = Literal["easy", "medium", "hard"]
ScorerName = Literal["text", "mc", "yesno", "count"]

MIN_SCORE = 1
MAX_SCORE = 10
# Mags-RL's stages: easy 1-3, medium 4-7, hard 8-10 (upper bounds, inclusive).
EASY_MAX = 3
MEDIUM_MAX = 7
MAX_BATCH = 256


def level_of(zoom_score: int) -> Level:
    if zoom_score <= EASY_MAX:
        return "easy"
    return "medium" if zoom_score <= MEDIUM_MAX else "hard"


class ScoreRequest(BaseModel):
    image: ImageRef
    question: str = Field(min_length=1, max_length=8000)
    answer: str | None = Field(
        None, max_length=2000, description="The reference answer; pass_rate needs it."
    )
    options: list[str] | None = Field(
        None, min_length=2, max_length=26, description="Multiple-choice options, if any."
    )
    bbox: list[Annotated[float, Field(allow_inf_nan=False, strict=True)]] | None = Field(
        None,
        min_length=4,
        max_length=4,
        description="The target region, [x1, y1, x2, y2] in original-image pixels; "
        "the heuristic's object_scale factor uses it.",
    )
    scorer: ScorerName | None = Field(
        None,
        description="How pass_rate compares answers (magsrl.data.scorers); default: mc "
        "with options, else text.",
    )
    method: Method | None = Field(None, description="Default: the judge's MAGSRL_JUDGE_METHOD.")
    cache: bool = Field(
        True, description="false: score afresh (pass_rate re-scoring) and overwrite the cache."
    )
    # pass_rate only: which policy version to measure; the base model by default.
    policy_model: str | None = Field(None, max_length=200)

    @field_validator("bbox")
    @classmethod
    def _ordered(cls, box: list[float] | None) -> list[float] | None:
        if box is not None and (box[2] <= box[0] or box[3] <= box[1] or min(box) < 0):
            raise ValueError(
                f"bbox {box} must be [x1, y1, x2, y2] in pixels with x2 > x1, y2 > y1, all >= 0"
            )
        return box


class Factors(BaseModel):
    """The rubric's four factors, each on the 1-10 scale (higher: more need to zoom);
    null when the method cannot tell (object_scale without a box, or pass_rate)."""

    information_density: float | None = None
    object_scale: float | None = None
    visual_clutter: float | None = None
    detail_level: float | None = None


class ScoreResponse(BaseModel):
    zoom_score: int = Field(ge=MIN_SCORE, le=MAX_SCORE)
    level: Level
    factors: Factors
    rationale: str
    method: Method
    # Extensions to the design's contract:
    raw_score: float = Field(description="The unrounded score, 1-10, for finer ordering.")
    version: str = Field(description="The method's version; part of the cache key.")
    cached: bool = False
    samples: list[float] | None = Field(
        None, description="mllm: each sample's score; pass_rate: each attempt's correctness."
    )


class BatchScoreRequest(BaseModel):
    items: list[ScoreRequest] = Field(min_length=1, max_length=MAX_BATCH)
    method: Method | None = Field(None, description="For items that name none.")


class BatchItemError(BaseModel):
    type: str
    message: str
    param: str | None = None


class BatchScoreResult(BaseModel):
    """Exactly one of ``score`` or ``error``: one bad item does not fail the batch."""

    index: int
    score: ScoreResponse | None = None
    error: BatchItemError | None = None


class BatchScoreResponse(BaseModel):
    results: list[BatchScoreResult]
    cached: int = Field(description="How many results came from the cache.")
    timing_ms: float
