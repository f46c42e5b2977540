"""Wire models of the magnifier service (``POST /v1/images``, ``POST /v1/zoom``).

The policy and the rollout workers import these as the client side; nothing is declared twice.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field

from magsrl.proto.images import ImageInfo, ImageRef
from magsrl.proto.vocab import ImageFormat, UpscaleMethod

__all__ = ["Coords", "Crop", "ImageInfo", "ImageRef", "ZoomRequest", "ZoomResponse"]

MAX_BOXES_PER_REQUEST = 16
# Output pixel budget bounds: at least a 64x64 crop, at most 4096x4096.
MIN_OUTPUT_PIXELS = 64 * 64
MAX_OUTPUT_PIXELS = 4096 * 4096

Coordinate = Annotated[float, Field(allow_inf_nan=False, strict=True)]  # "10" is refused
BoxIn = Annotated[list[Coordinate], Field(min_length=4, max_length=4)]


class Coords(StrEnum):
    pixel = "pixel"
    norm1 = "norm1"
    norm1000 = "norm1000"


class ZoomRequest(BaseModel):
    image: ImageRef
    boxes: list[BoxIn] = Field(
        min_length=1,
        max_length=MAX_BOXES_PER_REQUEST,
        description="Regions as [x1, y1, x2, y2] in the `coords` convention of the original.",
    )
    coords: Coords = Field(Coords.pixel, description="pixel, norm1 (0-1) or norm1000 (0-1000).")
    method: str = Field(
        "sr",
        min_length=1,
        max_length=64,
        description="sr (the default super-resolution backend), bicubic, crop, or a backend "
        "name such as span-x4, span-x2, realesrgan-x4plus, compact-x4, smfanet-x4.",
    )
    max_pixels: int | None = Field(
        None,
        ge=MIN_OUTPUT_PIXELS,
        le=MAX_OUTPUT_PIXELS,
        description="Output pixel budget per crop; the server default when omitted.",
    )
    format: ImageFormat = "png"
    quality: int = Field(90, ge=1, le=100, description="For webp and jpeg.")


class Crop(BaseModel):
    box: list[int] = Field(
        description="The crop actually taken, in original pixels, after "
        "minimum-size expansion and clamping."
    )
    width: int
    height: int
    method: UpscaleMethod = Field(description="What was applied.")
    model: str | None = Field(description="The SR backend used, when method is sr.")
    scale: float = Field(description="Output width over crop width.")
    perceptual: bool = Field(
        False, description="True when a GAN-trained backend may have invented texture."
    )
    format: str
    b64: str


class ZoomResponse(BaseModel):
    image_id: str
    crops: list[Crop]
    timing_ms: dict[str, float] = Field(
        description="fetch/decode, crop, upscale and encode, and the total."
    )
