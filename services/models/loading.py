"""Loading a Qwen-VL checkpoint (the tiny one or a real one, same file layout) for magsrl:
the model class of its family, and an image+text processor that needs no torchvision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import AutoTokenizer, ProcessorMixin, Qwen2VLImageProcessorPil

from magsrl.zoom.families import (
    IMAGE_PAD_TOKEN,
    ModelFamily,
    family_for_config,
    family_for_model_type,
    template_text,
)

CONFIG_FILE = "config.json"
# The transformers class for each model_type. Named, not imported, so that importing this
# module stays cheap and a missing class only fails for the family that needs it.
MODEL_CLASSES: dict[str, str] = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
}


class QwenVLProcessor(ProcessorMixin):
    """Qwen-VL processing of text and images, without the video slot.

    Qwen2.5-VL's and Qwen3-VL's own processors also hold a video processor, which needs
    torchvision; this one holds only the (PIL) image processor and the tokenizer, and does
    for images exactly what they do: each image placeholder becomes one ``<|image_pad|>``
    per merged patch, and ``mm_token_type_ids`` marks those tokens (1) for M-RoPE. It is a
    module-level class so that processors pickle (data loaders, worker processes).
    """

    # Both Qwen-VL models need mm_token_type_ids to place image tokens in 3-D RoPE.
    return_mm_token_type_ids = True
    # Qwen3-VL's processor turns token_type_ids off; the models take no such input.
    text_kwargs: ClassVar[dict[str, Any]] = {"return_token_type_ids": False}

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.image_token = getattr(tokenizer, "image_token", None) or IMAGE_PAD_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def replace_image_token(
        self, image_inputs: dict[str, Any], image_idx: int, **kwargs: Any
    ) -> str:
        merge_length = self.image_processor.merge_size**2
        count = int(image_inputs["image_grid_thw"][image_idx].prod()) // merge_length
        return self.image_token * count

    @property
    def model_input_names(self) -> list[str]:
        return [*super().model_input_names, "mm_token_type_ids"]

    def pixel_bounds(self) -> tuple[int, int]:
        """``(min_pixels, max_pixels)`` the image processor resizes into."""
        size = self.image_processor.size
        return int(size["shortest_edge"]), int(size["longest_edge"])


def read_config(path: Path) -> dict[str, Any]:
    config_file = Path(path) / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path}: not a model folder")
    return json.loads(config_file.read_text(encoding="utf-8"))


def load_family(path: Path) -> ModelFamily:
    """The family of the checkpoint at ``path``, from its config.json alone."""
    return family_for_config(read_config(path))


def load_processor(
    path: Path,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    chat_template: str | None = None,
) -> QwenVLProcessor:
    """The checkpoint's tokenizer and image settings, with magsrl's chat template for its
    family (which renders tools and images together) unless ``chat_template`` is given.
    ``min_pixels``/``max_pixels`` override the checkpoint's per-image pixel bounds."""
    path = Path(path)
    family = load_family(path)
    overrides = {
        k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None
    }
    # The PIL image processor reads the same preprocessor_config.json as the default
    # (torchvision) one; its min_pixels/max_pixels arguments win over the file's size.
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(path), **overrides)
    if image_processor.patch_size != family.patch_size:
        raise ValueError(
            f"{path}: the image processor's patch_size is {image_processor.patch_size}, but a "
            f"{family.name} model uses {family.patch_size}"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    template = chat_template if chat_template is not None else template_text(family)
    tokenizer.chat_template = template
    return QwenVLProcessor(image_processor, tokenizer, chat_template=template)


def model_class(model_type: str) -> type:
    """The ``...ForConditionalGeneration`` class for a config's model_type."""
    family_for_model_type(model_type)  # a clear error for unsupported models
    import transformers

    return getattr(transformers, MODEL_CLASSES[model_type])


def load_model(
    path: Path, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """The family's ``...ForConditionalGeneration`` from ``path``, on ``device`` in ``dtype``."""
    path = Path(path)
    cls = model_class(str(read_config(path).get("model_type")))
    # Straight onto an accelerator: a large checkpoint should not be built in host memory first.
    placement = {} if device == "cpu" else {"device_map": device}
    model = cls.from_pretrained(str(path), dtype=dtype, **placement)
    return model.to(device) if device == "cpu" else model
