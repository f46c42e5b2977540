"""The Qwen-VL model families magsrl serves: their box convention, chat template, vision
patch geometry, and the exact image size their processor resizes to."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from magsrl.common.coords import Convention
from magsrl.common.errors import InvalidInput

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PAD_TOKEN = "<|image_pad|>"
# The ChatML turn markers every Qwen-VL template writes: a turn ends with END_OF_TURN, and
# generation stops at either EOS token (<|endoftext|> ends a base-model document).
END_OF_TURN = "<|im_end|>"
EOS_TOKENS = (END_OF_TURN, "<|endoftext|>")
# Qwen's smart_resize refuses images more elongated than this.
MAX_ASPECT_RATIO = 200
TEMPLATES_PACKAGE = "magsrl.proto"
TEMPLATES_FOLDER = "templates"


@dataclass(frozen=True)
class ModelFamily:
    """What the serving and training code needs to know about one Qwen-VL generation."""

    name: str
    convention: Convention
    template: str  # file name under proto/templates
    patch_size: int
    merge_size: int
    model_types: tuple[str, ...]  # config.model_type values that belong to this family
    temporal_patch_size: int = 2
    image_placeholder: str = IMAGE_PLACEHOLDER
    image_token: str = IMAGE_PAD_TOKEN
    end_of_turn: str = END_OF_TURN  # the token that closes a turn in this family's template
    eos_tokens: tuple[str, ...] = EOS_TOKENS  # generation stops at any of these
    # The processor defaults of the released checkpoints (preprocessor_config.json), used
    # when neither the caller nor the checkpoint gives pixel bounds.
    default_min_pixels: int = 56 * 56
    default_max_pixels: int = 28 * 28 * 1280
    # What the family's own template says when a conversation has no system message.
    default_system_prompt: str | None = None

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this: one merged visual token covers factor² pixels."""
        return self.patch_size * self.merge_size

    def visual_tokens(self, width: int, height: int, min_pixels: int, max_pixels: int) -> int:
        """Placeholder tokens one image of this size becomes in the prompt."""
        w, h = resized_size(width, height, self, min_pixels, max_pixels)
        return (w // self.factor) * (h // self.factor)


QWEN2_5_VL = ModelFamily(
    name="qwen2_5_vl",
    convention=Convention.QWEN2_5_VL,
    template="qwen2_5_vl.jinja",
    patch_size=14,
    merge_size=2,
    model_types=("qwen2_5_vl", "qwen2_vl"),
    default_min_pixels=56 * 56,
    default_max_pixels=28 * 28 * 1280,
    default_system_prompt="You are a helpful assistant.",
)

QWEN3_VL = ModelFamily(
    name="qwen3_vl",
    convention=Convention.QWEN3_VL,
    template="qwen3_vl.jinja",
    patch_size=16,
    merge_size=2,
    model_types=("qwen3_vl", "qwen3_vl_moe"),
    # Qwen3-VL's preprocessor_config.json: size {shortest_edge: 65536, longest_edge: 16777216}
    default_min_pixels=65536,
    default_max_pixels=16777216,
    default_system_prompt=None,
)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (QWEN2_5_VL, QWEN3_VL)}
_BY_MODEL_TYPE: dict[str, ModelFamily] = {t: f for f in FAMILIES.values() for t in f.model_types}


def get_family(name: str) -> ModelFamily:
    """A family by name, with an error that lists the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; choose from {sorted(FAMILIES)}") from None


def family_for_model_type(model_type: str) -> ModelFamily:
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise ValueError(
            f"model_type {model_type!r} is not a supported Qwen-VL model; supported: "
            f"{sorted(_BY_MODEL_TYPE)}"
        ) from None


def family_for_config(config: Any) -> ModelFamily:
    """The family of a transformers config object or a parsed config.json dict."""
    model_type = config.get("model_type") if isinstance(config, Mapping) else config.model_type
    if not model_type:
        raise ValueError("the model config has no model_type")
    return family_for_model_type(str(model_type))


def template_text(family: ModelFamily) -> str:
    """The family's chat template, read from the installed ``magsrl.proto`` package."""
    return (
        resources.files(TEMPLATES_PACKAGE)
        .joinpath(TEMPLATES_FOLDER, family.template)
        .read_text(encoding="utf-8")
    )


def check_aspect(width: int, height: int, param: str) -> None:
    """Refuses, as the caller's fault, an image too elongated for the Qwen processor (which
    raises inside ``smart_resize``): a 60000x1 image is a 400, not a 500."""
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise InvalidInput(
            f"the image is {width}x{height}, an aspect ratio of {ratio:.0f}:1, over the "
            f"model's limit of {MAX_ASPECT_RATIO}:1; crop or pad it",
            param=param,
        )


def checked_frame(
    frame_size: Callable[[int, int], tuple[int, int]], param: str = "image"
) -> Callable[[int, int], tuple[int, int]]:
    """``frame_size`` (the model's view of an image) that first refuses an image too
    elongated for the processor (``check_aspect``)."""

    def frame(width: int, height: int) -> tuple[int, int]:
        check_aspect(width, height, param)
        return frame_size(width, height)

    return frame


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen's resize rule, ``(height, width)`` in and out: both sides multiples of ``factor``,
    the area within [min_pixels, max_pixels], the aspect ratio kept as well as that allows.
    It mirrors ``transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize``."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image sides must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got "
            f"{max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resized_size(
    width: int,
    height: int,
    family: ModelFamily,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """``(width, height)`` of the image as the family's processor resizes it: the frame of
    Qwen2.5-VL's absolute box coordinates. Pass the processor's own bounds
    (``image_processor.size["shortest_edge"/"longest_edge"]``); the family defaults otherwise."""
    h, w = smart_resize(
        height,
        width,
        family.factor,
        family.default_min_pixels if min_pixels is None else min_pixels,
        family.default_max_pixels if max_pixels is None else max_pixels,
    )
    return w, h
