"""The one sample type every loader produces and every consumer (judge, trainer, eval) reads.
It crosses process boundaries inside rollout jobs, so it lives with the wire models; its JSONL
reading and writing live in ``magsrl.data.sample``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from magsrl.proto.judge import ScorerName


class Sample(BaseModel):
    """One question about one image. ``image`` is an absolute path once loaded; in a JSONL
    file it may be relative to the file. ``bbox`` is the target region, pixel xyxy in the
    original image, when the dataset has one."""

    id: str = Field(min_length=1)
    image: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: str
    options: list[str] | None = None
    bbox: list[float] | None = Field(None, min_length=4, max_length=4)
    category: str | None = None
    dataset: str = "jsonl"
    scorer: ScorerName = "text"
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("bbox")
    @classmethod
    def _ordered(cls, box: list[float] | None) -> list[float] | None:
        if box is not None and (box[2] <= box[0] or box[3] <= box[1]):
            raise ValueError(f"bbox {box} must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1")
        return box
