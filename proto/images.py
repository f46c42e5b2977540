"""How a request names an image: an id from an earlier upload, inline base64, or a URL."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, Field, model_validator

SHA256_PATTERN = "^[0-9a-f]{64}$"


class ImageRef(BaseModel):
    """Exactly one of ``id``, ``b64`` or ``url``."""

    id: str | None = Field(
        None, pattern=SHA256_PATTERN, description="sha256 returned by POST /v1/images."
    )
    b64: str | None = Field(None, min_length=1, description="Base64 image bytes, or a data: URL.")
    url: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="http(s) URL; its host must be in the allowlist.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [name for name in ("id", "b64", "url") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'id', 'b64' or 'url' for the image"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class ImageInfo(BaseModel):
    """What POST /v1/images returns."""

    image_id: str = Field(pattern=SHA256_PATTERN, description="sha256 of the uploaded bytes.")
    width: int = Field(ge=1)
    height: int = Field(ge=1)
