"""The offline tiny model: a random-weight Qwen2.5-VL or Qwen3-VL of the real architecture
class, about 0.2M parameters, with a byte-level BPE tokenizer trained here from a built-in
corpus, so tests and demos run the real code paths with no network and in milliseconds.

Build one with ``magsrl make-tiny-model DIR``; ``--model tiny`` builds or reuses one in the
cache (``ensure_tiny_model``)."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from magsrl.common.settings import default_cache_dir
from magsrl.proto.tools import zoom_tool
from magsrl.zoom.families import (
    END_OF_TURN,
    EOS_TOKENS,
    FAMILIES,
    ModelFamily,
    get_family,
    template_text,
)

TINY_PREFIX = "tiny"
DEFAULT_FAMILY = "qwen2_5_vl"
# Bumped whenever the recipe changes, so a cached model from an older recipe is rebuilt.
RECIPE_VERSION = 1
RECIPE_FILE = "magsrl_tiny.json"

# Qwen's special tokens, in Qwen's order (their ids follow the BPE vocabulary, as in Qwen).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Added but not special: decoding with skip_special_tokens=True keeps them, so the parsers
# see the tags and tool calls the model wrote.
TAG_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<zoom>",
    "</zoom>",
    "<rethink>",
    "</rethink>",
    "<answer>",
    "</answer>",
)
# Written into the saved processor files, so that transformers' AutoProcessor (where
# torchvision is installed, as in the vLLM image) and vLLM load the folder like a real one.
HF_PROCESSOR_CLASS = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}
PROCESSOR_FILES = ("processor_config.json", "tokenizer_config.json")
EOS_TOKEN = END_OF_TURN
PAD_TOKEN = EOS_TOKENS[-1]  # <|endoftext|>, as Qwen pads

VOCAB_SIZE = 1024  # BPE merges + the added tokens above
MAX_BOX_COORD = 1000  # Qwen3-VL's 0-1000 grid; every integer up to it is in the corpus
CORPUS_SEED = 0  # the corpus is fixed: the tokenizer never depends on the model seed
CORPUS_TOOL_CALLS = 64
# Phrases repeated so that BPE learns them as few tokens; the rest of the vocabulary goes
# to numbers, so that a box coordinate is at most two tokens.
PROSE_REPEATS = 8
PROSE = (
    "You are a helpful assistant. Think about the image first, then zoom into a region when "
    "the details are unclear. After the magnified regions come back, rethink and give the "
    "answer. The answer is yes or no, left or right, above or below.\n"
    "What color is the object on the left? How many people are in the image? Is the cat to "
    "the right of the dog? Which sign is closer to the camera?\n"
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
)
# Short words the zoom prompts and answers use, each to be one token.
WORD_LIST = (
    "think zoom rethink answer yes no left right top bottom up down center red green blue "
    "white black yellow small large one two three four five region image crop box label"
)
WORDS = WORD_LIST.split()
ASCII_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))

# Architecture: Qwen's real classes, shrunk. Text: 2 layers of hidden 64 with GQA.
TEXT_HIDDEN = 64
TEXT_LAYERS = 2
TEXT_HEADS = 4
TEXT_KV_HEADS = 2
TEXT_HEAD_DIM = TEXT_HIDDEN // TEXT_HEADS
TEXT_INTERMEDIATE = 128
MAX_POSITIONS = 8192
# M-RoPE splits head_dim/2 rotary frequencies over (temporal, height, width); Qwen's own
# sections assume head_dim 128, so they are scaled down to sum to TEXT_HEAD_DIM // 2.
MROPE_SECTION = {"qwen2_5_vl": [2, 3, 3], "qwen3_vl": [4, 2, 2]}
ROPE_THETA = {"qwen2_5_vl": 1_000_000.0, "qwen3_vl": 5_000_000.0}
# Vision: 2 blocks of hidden 24 (the patch embedding dominates the parameter count).
VISION_HIDDEN = 24
VISION_DEPTH = 2
VISION_HEADS = 2
VISION_INTERMEDIATE = 48
QWEN3_POSITION_GRID = 8  # learned positions on an 8x8 grid, interpolated to any image
# Pixel budget: every image is 4 to 64 merged visual tokens.
MIN_VISUAL_TOKENS = 4
MAX_VISUAL_TOKENS = 64
INIT_STD = 0.02


def tiny_name(family: str) -> str:
    return f"{TINY_PREFIX}-{family}"


def _corpus() -> list[str]:
    rng = random.Random(CORPUS_SEED)
    corpus = [PROSE] * PROSE_REPEATS + [" ".join(WORDS)] * PROSE_REPEATS
    corpus += [ASCII_PRINTABLE, json.dumps(zoom_tool()), " ".join(TAG_TOKENS)]
    # Every coordinate both as it opens a list and after ", ", the two places it appears.
    corpus += [f"[{n}, {n}] {n}" for n in range(MAX_BOX_COORD + 1)]
    for _ in range(CORPUS_TOOL_CALLS):
        box = sorted(rng.sample(range(MAX_BOX_COORD + 1), 4))
        arguments = {"bbox_2d": box, "label": rng.choice(WORDS), "img_idx": 0}
        corpus.append(json.dumps({"name": "zoom", "arguments": arguments}))
        corpus.append(f"<think>{rng.choice(WORDS)} <zoom>[{box}]</zoom></think>")
    return corpus


def build_tokenizer(chat_template: str | None = None) -> Any:
    """A byte-level BPE tokenizer with Qwen's special tokens, as a transformers tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    # GPT-2's byte-level split keeps digit runs together (Qwen's own splits single digits),
    # so a box coordinate is one or two tokens instead of one per digit.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(QWEN_SPECIAL_TOKENS) - len(TAG_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer)
    backend.add_special_tokens([AddedToken(t, special=True) for t in QWEN_SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[t for t in QWEN_SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)],
        model_max_length=MAX_POSITIONS,
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
    )


def _token_ids(tokenizer: Any) -> dict[str, int]:
    ids = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    return {key: int(tokenizer.convert_tokens_to_ids(tok)) for key, tok in ids.items()}


def build_config(family: ModelFamily, tokenizer: Any) -> Any:
    """The family's real config class with tiny sizes."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    eos_id = int(tokenizer.convert_tokens_to_ids(EOS_TOKEN))
    pad_id = int(tokenizer.convert_tokens_to_ids(PAD_TOKEN))
    rope: dict[str, Any] = {
        "rope_type": "default",
        "rope_theta": ROPE_THETA[family.name],
        "mrope_section": MROPE_SECTION[family.name],
    }
    text: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": TEXT_INTERMEDIATE,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": TEXT_HEADS,
        "num_key_value_heads": TEXT_KV_HEADS,
        "max_position_embeddings": MAX_POSITIONS,
        "initializer_range": INIT_STD,
        "rope_parameters": rope,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
    }
    vision: dict[str, Any] = {
        "depth": VISION_DEPTH,
        "hidden_size": VISION_HIDDEN,
        "intermediate_size": VISION_INTERMEDIATE,
        "num_heads": VISION_HEADS,
        "out_hidden_size": TEXT_HIDDEN,
        "patch_size": family.patch_size,
        "spatial_merge_size": family.merge_size,
        "temporal_patch_size": family.temporal_patch_size,
        "initializer_range": INIT_STD,
    }
    common = {**_token_ids(tokenizer), "tie_word_embeddings": True}
    if family.name == "qwen2_5_vl":
        text["bos_token_id"] = pad_id
        # The last block attends globally, the others within windows, as in the real model.
        vision.update(fullatt_block_indexes=[VISION_DEPTH - 1], window_size=112)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    if family.name == "qwen3_vl":
        text["head_dim"] = TEXT_HEAD_DIM  # Qwen3-VL does not derive it
        rope["mrope_interleaved"] = True
        vision.update(
            hidden_act="gelu_pytorch_tanh",
            num_position_embeddings=QWEN3_POSITION_GRID**2,
            deepstack_visual_indexes=[0],
        )
        return Qwen3VLConfig(text_config=text, vision_config=vision, **common)
    raise ValueError(f"no tiny recipe for family {family.name!r}")


def image_processor_settings(family: ModelFamily) -> dict[str, Any]:
    token_pixels = family.factor**2
    settings: dict[str, Any] = {
        "size": {
            "shortest_edge": MIN_VISUAL_TOKENS * token_pixels,
            "longest_edge": MAX_VISUAL_TOKENS * token_pixels,
        },
        "patch_size": family.patch_size,
        "temporal_patch_size": family.temporal_patch_size,
        "merge_size": family.merge_size,
    }
    if family.name == "qwen3_vl":  # Qwen3-VL normalises with mean = std = 0.5
        settings.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return settings


def build_tiny_model(out_dir: Path, family: str = DEFAULT_FAMILY, seed: int = 0) -> Path:
    """Write a tiny random-weight model of ``family`` to ``out_dir``: config, safetensors
    weights, tokenizer, processor, generation config and chat template. Deterministic: the
    same family and seed give the same files."""
    import torch
    from transformers import GenerationConfig, Qwen2VLImageProcessorPil

    from magsrl.models.loading import QwenVLProcessor, model_class

    spec = get_family(family)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    template = template_text(spec)
    tokenizer = build_tokenizer(template)
    config = build_config(spec, tokenizer)

    cls = model_class(config.model_type)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = cls(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's random stream alone
    eos_id = int(tokenizer.convert_tokens_to_ids(EOS_TOKEN))
    pad_id = int(tokenizer.convert_tokens_to_ids(PAD_TOKEN))
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=pad_id, do_sample=False
    )
    model.save_pretrained(str(out_dir))

    image_processor = Qwen2VLImageProcessorPil(**image_processor_settings(spec))
    QwenVLProcessor(image_processor, tokenizer, chat_template=template).save_pretrained(
        str(out_dir)
    )
    _set_processor_class(out_dir, HF_PROCESSOR_CLASS[spec.name])
    recipe = {"family": spec.name, "seed": seed, "recipe_version": RECIPE_VERSION}
    (out_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _set_processor_class(folder: Path, name: str) -> None:
    for file_name in PROCESSOR_FILES:
        path = folder / file_name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            data["processor_class"] = name
            path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _is_current(path: Path, family: str) -> bool:
    try:
        recipe = json.loads((path / RECIPE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recipe.get("family") == family and recipe.get("recipe_version") == RECIPE_VERSION


def ensure_tiny_model(family: str = DEFAULT_FAMILY, root: Path | None = None) -> Path:
    """The cached tiny model of ``family``, built on first use. Safe against concurrent
    callers: each builds into its own temporary folder and renames it into place."""
    get_family(family)
    root = Path(root) if root is not None else default_cache_dir() / "models"
    target = root / tiny_name(family)
    if _is_current(target, family):
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{tiny_name(family)}-", dir=root))
    try:
        build_tiny_model(staging, family)
        if target.exists() and not _is_current(target, family):
            shutil.rmtree(target, ignore_errors=True)  # an older recipe or a broken build
        try:
            os.rename(staging, target)
        except OSError:
            # Another process got there first; its model is the same one.
            if not _is_current(target, family):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model(spec: str) -> Path | str:
    """``tiny`` / ``tiny-<family>`` to the cached tiny model, ``nano`` to the committed nano
    model, an existing local path to
    itself, anything else (a Hugging Face id) unchanged."""
    if spec == TINY_PREFIX:
        return ensure_tiny_model(DEFAULT_FAMILY)
    if spec == "nano":  # the committed, trained nano model (docs/nano.md)
        from magsrl.models.nano_checkpoint import nano_model_dir

        return nano_model_dir()
    for family in FAMILIES:
        if spec == tiny_name(family):
            return ensure_tiny_model(family)
    path = Path(spec).expanduser()
    if path.exists():
        return path
    return spec
