"""Wire models of the trace viewer's endpoints on the policy: the same boxes under every
upscaling method (``POST /v1/viewer/crops``), and the sample images to pick from."""

from __future__ import annotations

from typing import Annotated, get_args

from pydantic import BaseModel, Field, field_validator

from magsrl.proto.images import ImageRef
from magsrl.proto.magnifier import MAX_BOXES_PER_REQUEST
from magsrl.proto.vocab import UpscaleMethod

Method = UpscaleMethod
ALL_METHODS: tuple[Method, ...] = get_args(UpscaleMethod)

Coordinate = Annotated[float, Field(allow_inf_nan=False, strict=True)]
PixelBox = Annotated[list[Coordinate], Field(min_length=4, max_length=4)]


class CropsRequest(BaseModel):
    image: ImageRef
    boxes: list[PixelBox] = Field(
        min_length=1,
        max_length=MAX_BOXES_PER_REQUEST,
        description="Regions as [x1, y1, x2, y2] in original-image pixels, as /answer "
        "returns them.",
    )
    methods: list[Method] = Field(
        default_factory=lambda: list(ALL_METHODS),
        min_length=1,
        max_length=len(ALL_METHODS),
        description="sr (super-resolution), bicubic and crop (the plain cut-out), in the "
        "order the crops come back.",
    )

    @field_validator("boxes")
    @classmethod
    def _ordered(cls, boxes: list[list[float]]) -> list[list[float]]:
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            if x2 <= x1 or y2 <= y1:
                raise ValueError(
                    f"boxes[{i}] = {[x1, y1, x2, y2]}: give [x1, y1, x2, y2] with x2 > x1 "
                    "and y2 > y1, in original-image pixels"
                )
        return boxes

    @field_validator("methods")
    @classmethod
    def _distinct(cls, methods: list[Method]) -> list[Method]:
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods {methods} repeats a method; list each once")
        return methods


class MethodCrop(BaseModel):
    method: Method
    model: str | None = Field(description="The SR network, when method is sr.")
    width: int
    height: int
    format: str
    b64: str


class BoxCrops(BaseModel):
    box: list[int] = Field(
        description="The crop actually taken, in original pixels (after minimum-size "
        "expansion and clamping)."
    )
    crops: list[MethodCrop] = Field(description="One per requested method, in that order.")


class CropsResponse(BaseModel):
    image_id: str = Field(description="The image's id in the magnifier.")
    boxes: list[BoxCrops]
    timing_ms: dict[str, float] = Field(
        description="upload, one entry per method (its magnifier round trip), and total."
    )


class ViewerSample(BaseModel):
    id: str
    question: str
    options: list[str] | None = None
    category: str | None = None
    answer: str = Field(description="The gold answer (a letter for multiple choice).")
    width: int
    height: int


class SampleList(BaseModel):
    source: str = Field(description="'builtin' (synthetic scenes), or the dataset path.")
    data: list[ViewerSample]
