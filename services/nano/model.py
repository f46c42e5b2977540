"""The nano model's architecture, tokenizer and processor: a small Qwen2.5-VL (the real
transformers classes) sized to train from scratch on two CPU cores on the ``nano`` scenes
(``magsrl.data.nano_scenes``). Its trained weights are committed under ``nano_weights/``
and ``--model nano`` loads them (``resolve_model``); ``magsrl nano train`` rebuilds them.

Three choices make it learnable and cheap (docs/nano.md gives the measurements):
- the tokenizer is tiny's byte-level BPE plus *phrase tokens*: the protocol's fixed texts
  (the system prompt at the nano view size, the question, the zoom feedback) are each one
  added token, so a whole two-round episode is about 120 tokens, 32 of them visual;
  other text still tokenizes through the BPE;
- every box coordinate the nano scenes need (multiples of 28 up to the 112-px view) is
  one token, so a box is four classifications;
- the processor's pixel budget makes the 448-px scene a 112x112 view (16 merged tokens),
  which is what keeps the digit illegible without a zoom.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from magsrl.data import nano_scenes as ns

# Re-exported: the recipe and its callers name the checkpoint's location through here.
from magsrl.models.nano_checkpoint import (  # noqa: F401
    NANO_NAME,
    RECIPE_FILE,
    WEIGHTS_DIR,
    nano_model_dir,
)
from magsrl.proto.prompts import coordinate_hint, render_prompt
from magsrl.zoom.families import QWEN2_5_VL, template_text

TEXT_HIDDEN = 128
TEXT_LAYERS = 3
TEXT_HEADS = 4
TEXT_KV_HEADS = 2
TEXT_INTERMEDIATE = 256
MROPE_SECTION = [4, 6, 6]  # sums to head_dim / 2 = 16
VISION_HIDDEN = 64
VISION_DEPTH = 3
VISION_HEADS = 2
VISION_INTERMEDIATE = 128
INIT_STD = 0.02
MAX_POSITIONS = 2048
VIEW_PIXELS = ns.VIEW * ns.VIEW  # the processor's max_pixels: a 448-px scene becomes 112x112
MIN_PIXELS = 56 * 56


def phrase_tokens() -> list[str]:
    """The protocol's fixed texts, each to become one token."""
    hint = coordinate_hint(QWEN2_5_VL.convention, ns.VIEW, ns.VIEW)
    system = render_prompt("system_tags", coordinate_hint=hint)
    return [
        system,
        render_prompt("system_direct"),
        ns.QUESTION,
        render_prompt("zoom_feedback"),
        "Image 1: the region ",
    ]


def coordinate_tokens() -> list[str]:
    return [str(v) for v in range(0, ns.VIEW + 1, ns.VIEW_CELL)]


def build_tokenizer() -> Any:
    from tokenizers import AddedToken

    from magsrl.models.tiny import build_tokenizer as tiny_tokenizer

    tokenizer = tiny_tokenizer(template_text(QWEN2_5_VL))
    extra = [*phrase_tokens(), *coordinate_tokens()]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra])
    return tokenizer


def build_config(tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLConfig

    from magsrl.models.tiny import EOS_TOKEN, PAD_TOKEN, _token_ids

    eos_id = int(tokenizer.convert_tokens_to_ids(EOS_TOKEN))
    pad_id = int(tokenizer.convert_tokens_to_ids(PAD_TOKEN))
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": TEXT_INTERMEDIATE,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": TEXT_HEADS,
        "num_key_value_heads": TEXT_KV_HEADS,
        "max_position_embeddings": MAX_POSITIONS,
        "initializer_range": INIT_STD,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10_000.0,
            "mrope_section": MROPE_SECTION,
        },
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "bos_token_id": pad_id,
    }
    vision = {
        "depth": VISION_DEPTH,
        "hidden_size": VISION_HIDDEN,
        "intermediate_size": VISION_INTERMEDIATE,
        "num_heads": VISION_HEADS,
        "out_hidden_size": TEXT_HIDDEN,
        "patch_size": QWEN2_5_VL.patch_size,
        "spatial_merge_size": QWEN2_5_VL.merge_size,
        "temporal_patch_size": QWEN2_5_VL.temporal_patch_size,
        "initializer_range": INIT_STD,
        "fullatt_block_indexes": [VISION_DEPTH - 1],
        "window_size": 112,
    }
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=True, **_token_ids(tokenizer)
    )


def build_untrained(out_dir: Path, seed: int = 0) -> Path:
    """A randomly initialised nano model folder (config, weights, tokenizer, processor)."""
    import torch
    from transformers import GenerationConfig, Qwen2VLImageProcessorPil

    from magsrl.models.loading import QwenVLProcessor, model_class
    from magsrl.models.tiny import (
        EOS_TOKEN,
        HF_PROCESSOR_CLASS,
        PAD_TOKEN,
        _set_processor_class,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    torch.manual_seed(seed)
    model = model_class(config.model_type)(config).eval()
    eos_id = int(tokenizer.convert_tokens_to_ids(EOS_TOKEN))
    pad_id = int(tokenizer.convert_tokens_to_ids(PAD_TOKEN))
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=pad_id, do_sample=False
    )
    model.save_pretrained(str(out_dir))
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": VIEW_PIXELS},
        patch_size=QWEN2_5_VL.patch_size,
        temporal_patch_size=QWEN2_5_VL.temporal_patch_size,
        merge_size=QWEN2_5_VL.merge_size,
    )
    template = template_text(QWEN2_5_VL)
    QwenVLProcessor(image_processor, tokenizer, chat_template=template).save_pretrained(
        str(out_dir)
    )
    _set_processor_class(out_dir, HF_PROCESSOR_CLASS[QWEN2_5_VL.name])
    return out_dir


def write_recipe(out_dir: Path, info: dict[str, Any]) -> None:
    (Path(out_dir) / RECIPE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
