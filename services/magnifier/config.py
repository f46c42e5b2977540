"""Magnifier settings: one validated place, environment prefix ``MAGSRL_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from magsrl.common.settings import CommaList, ServiceSettings, default_cache_dir, split_comma_list
from magsrl.proto.magnifier import MAX_BOXES_PER_REQUEST, MAX_OUTPUT_PIXELS, MIN_OUTPUT_PIXELS

DEFAULT_PORT = 8001


class MagnifierSettings(ServiceSettings):
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)

    weights_dir: Path = Field(
        default_factory=lambda: default_cache_dir() / "weights",
        description="Where `magsrl weights` puts converted weights.",
    )
    default_backend: str = Field("span-x4", description="The backend `method: sr` uses.")
    preload: CommaList = Field(
        default_factory=lambda: ["span-x4"],
        description="Backends loaded at start-up; /ready waits for them. Others load lazily.",
    )
    smfanet_checkpoint: Path | None = Field(
        None,
        description="A SMFANet x4 checkpoint (basicsr .pth or safetensors); enables "
        "the smfanet-x4 backend.",
    )

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto picks cuda if present."
    )
    fp16: bool = Field(True, description="Half precision on cuda (ignored on CPU).")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads on CPU.")

    max_pixels: int = Field(
        1024 * 1024,
        ge=MIN_OUTPUT_PIXELS,
        le=MAX_OUTPUT_PIXELS,
        description="Default output pixel budget per crop.",
    )
    # Per-request bounds: one /v1/zoom of a 1024^2 box at max_pixels 16 MP took 14.9 s and
    # answered 52 MB; two such boxes peaked at 3.7 GB. Over any of these gets a 413.
    max_boxes: int = Field(
        8,
        ge=1,
        le=MAX_BOXES_PER_REQUEST,
        description="Most boxes in one /v1/zoom request.",
    )
    max_total_pixels: int = Field(
        4 * 1024 * 1024,
        ge=MIN_OUTPUT_PIXELS,
        description="Output pixel budget of one /v1/zoom request, summed over its crops "
        "(bounds the upscaling work and memory of a request).",
    )
    max_response_bytes: int = Field(
        24 * 1024 * 1024,
        ge=1024,
        description="Largest /v1/zoom response: the encoded crops, as base64, summed.",
    )
    max_scale: float = Field(
        4.0, ge=1.0, le=8.0, description="Largest upscale factor applied to a crop."
    )
    min_sr_scale: float = Field(
        1.25,
        ge=1.0,
        le=8.0,
        description="Below this enlargement a crop is resized with bicubic instead of SR: a "
        "network pass for a few percent costs a forward and buys nothing.",
    )
    min_box_side: int = Field(
        28,
        ge=1,
        description="Box sides under this many original pixels are expanded around their centre.",
    )
    max_image_pixels: int = Field(64_000_000, ge=1, description="Largest decoded image accepted.")
    cache_bytes: int = Field(
        512 * 1024 * 1024, ge=0, description="Byte cap of the decoded-image LRU cache."
    )
    image_store_dir: Path | None = Field(
        None,
        description="The shared image store (a folder every replica sees): uploads are kept "
        "there too, so any replica serves any image id. Default: <runs_dir>/images when "
        "MAGSRL_RUNS_DIR is set; neither: ids are per replica.",
    )
    runs_dir: Path | None = Field(None, description="The trainer's MAGSRL_RUNS_DIR, if shared.")

    batch_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="How long a forward waits to gather a batch."
    )
    max_batch: int = Field(16, ge=1, le=256, description="Most crops in one forward pass.")
    tile_size: int = Field(
        256, ge=32, description="Input tile side for large crops; keeps activation memory bounded."
    )
    tile_overlap: int = Field(16, ge=0, description="Input pixels of context each tile side.")
    bucket: int = Field(
        32,
        ge=1,
        description="Small crops are padded up to a multiple of this "
        "so similar sizes batch together.",
    )

    @field_validator("preload", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return split_comma_list(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.tile_overlap * 2 >= self.tile_size:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be under half of "
                f"tile_size ({self.tile_size}); lower the overlap or raise the size"
            )
        return self
