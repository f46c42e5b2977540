"""Wire models of ``GET /v1/protocols``: every zoom protocol the policy can speak, with the
conventions a caller needs to compare checkpoints (how the model asks for a zoom, in which
coordinate frame, where the crop comes back, how the answer is read, the turn limit).

The entries themselves live in the zoom core (``magsrl.zoom.protocols``); this is only
their public description, so a client can read it without importing the core.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from magsrl.proto.vocab import ProtocolCrops


class ProtocolInfo(BaseModel):
    """One protocol and its conventions, as docs/protocols.md tabulates them."""

    name: str = Field(description="What --protocol, /answer's protocol and the configs take.")
    aliases: list[str] = Field(default_factory=list, description="Older names that still work.")
    title: str = Field(description="The system it comes from.")
    source: str = Field(description="Where its conventions were read (repository and file).")
    call_format: str = Field(description="How the model asks for a zoom, as it writes it.")
    tool_name: str | None = Field(None, description="The zoom function's name, if a tool.")
    chat_tool: dict[str, Any] | None = Field(
        None,
        description="The OpenAI function a /v1/chat/completions client declares in `tools` to "
        "get this protocol's calls back as tool_calls; null where the call is no function.",
    )
    coordinates: str = Field(
        description="The box convention: pixel (of a stated frame), norm1 (0-1) or "
        "norm1000 (0-1000); 'family' means the served model family's own."
    )
    frame: str = Field(description="Which image the numbers refer to.")
    frame_pixels: list[int] | None = Field(
        None, description="[min_pixels, max_pixels] of the processor frame, where it has one."
    )
    crop_in: ProtocolCrops = Field(
        description="Which message carries the crop back; served: the policy's crop_in."
    )
    crop_wrapper: str | None = Field(None, description="Text around the crop, if any.")
    observations: str = Field(description="How the model points at an earlier crop.")
    answer: str = Field(description="Where the final answer is read from.")
    max_rounds: int = Field(ge=1, description="The default turn limit, the answer included.")
    auto_match: list[str] = Field(
        default_factory=list, description="Model-name substrings that make auto pick this."
    )


class ProtocolList(BaseModel):
    object: Literal["list"] = "list"
    default: str = Field(description="What this policy serves when a request names none.")
    data: list[ProtocolInfo]
