"""The ``zoom`` tool: one pydantic model is the source of the OpenAI function schema used by
the chat API, the chat templates and the Hermes ``<tool_call>`` parser alike."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

ZOOM_TOOL_NAME = "zoom"
ZOOM_TOOL_DESCRIPTION = (
    "Magnify a region of an image to see fine detail. The region is cropped from the "
    "original full-resolution image and upscaled with super-resolution, and the result is "
    "returned as a new image. Use it when small objects, text or distant details are unclear."
)


class ZoomArguments(BaseModel):
    model_config = ConfigDict(extra="forbid", title="zoom arguments")

    bbox_2d: Annotated[
        list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=4, max_length=4)
    ] = Field(
        description="The region as [x1, y1, x2, y2], in the coordinate convention the "
        "system prompt gives for this model."
    )
    label: str | None = Field(
        None, max_length=200, description="What you expect to find in the region."
    )
    img_idx: int = Field(
        0, ge=0, description="Which image to zoom into: 0 is the original, k the k-th crop."
    )


def zoom_tool() -> dict[str, Any]:
    """The OpenAI ``tools`` entry for zoom."""
    parameters = ZoomArguments.model_json_schema()
    parameters.pop("title", None)
    return {
        "type": "function",
        "function": {
            "name": ZOOM_TOOL_NAME,
            "description": ZOOM_TOOL_DESCRIPTION,
            "parameters": parameters,
        },
    }
