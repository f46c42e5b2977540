"""A reference to an image held in the shared content-addressed image store
(``magsrl.common.image_blobs``): what a rollout result carries instead of the pixels."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from magsrl.proto.images import SHA256_PATTERN

ImageFormat = Literal["png", "jpeg", "webp", "gif", "bmp", "tiff"]


class StoredImage(BaseModel):
    """The encoded bytes' sha256 (the store's key), their size, and what they decode to.
    ``width``/``height`` are the encoded frame's, before any EXIF orientation."""

    sha256: str = Field(pattern=SHA256_PATTERN, description="sha256 of the encoded bytes.")
    size: int = Field(ge=1, description="Bytes of the encoded image.")
    format: ImageFormat = Field(description="The encoding, as read from the bytes.")
    width: int = Field(ge=1)
    height: int = Field(ge=1)
