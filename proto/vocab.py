"""Every word of the zoom episode's vocabulary, declared once: the wire models (``/answer``,
the rollout job, the run and eval configs), the settings, the CLI and the zoom core all take
their choices from here.

The choices are ``Literal`` aliases, so they compare to plain strings and their JSON schemas
stay enums; the ``*_CHOICES`` tuples are the same words for argparse and loops.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

ZoomMode = Literal["auto", "off", "force"]
"""auto: the model decides; off: one round, no zoom; force: round 1 must name a region
(MGPO's grounding turn)."""

UpscaleMethod = Literal["sr", "bicubic", "crop"]
"""How the magnifier enlarges a crop: super-resolution, bicubic, or the plain crop."""

Protocol = Literal[
    "auto",
    "tags",
    "tools",
    "magsrl_tags",
    "magsrl_tools",
    "deepeyes",
    "mini_o3",
    "mgpo",
    "qwen3_vl_thinking",
    "chain_of_focus",
]
"""How the model asks for a zoom and hears back: an entry of the zoom core's protocol
registry (``magsrl.zoom.protocols``, ``GET /v1/protocols``). magsrl_tags (alias tags): Mags-RL
``<think>/<zoom>/<rethink>/<answer>``; magsrl_tools (alias tools): Hermes tool calls to
``zoom``; deepeyes, mini_o3, mgpo, qwen3_vl_thinking, chain_of_focus: those checkpoints'
own formats; auto: chosen from the model's name (docs/protocols.md)."""

CropPlacement = Literal["tool", "user"]
"""Where crops go back to the model: in the tool message, or in a following user message
(for templates that cannot render images in tool messages)."""

ProtocolCrops = Literal["tool", "user", "served"]
"""Where a protocol puts crops (``GET /v1/protocols``): served means the policy's crop_in."""

MagnifierDown = Literal["error", "continue"]
"""When the magnifier is unreachable: fail (503), or answer without zooming."""

ImageFormat = Literal["png", "webp", "jpeg"]
"""Encodings of crops and stored images."""

ReturnCrops = Literal["ref", "b64"]
"""ref: crops by box and size only; b64: include the image data."""

ZOOM_MODES: tuple[str, ...] = get_args(ZoomMode)
UPSCALE_METHODS: tuple[str, ...] = get_args(UpscaleMethod)
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
CROP_PLACEMENTS: tuple[str, ...] = get_args(CropPlacement)
IMAGE_FORMATS: tuple[str, ...] = get_args(ImageFormat)


class Convention(StrEnum):
    """How a model writes box coordinates (see ``magsrl.common.coords`` for the maths)."""

    PIXEL = "pixel"
    NORM1 = "norm1"
    NORM1000 = "norm1000"
    QWEN3_VL = "qwen3-vl"
    QWEN2_5_VL = "qwen2.5-vl"
