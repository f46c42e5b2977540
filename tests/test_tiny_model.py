"""The offline tiny model, its loader and chat templates, for both Qwen-VL families: the
real architecture classes run end to end on real photos, and a training forward scores the
sampled tokens exactly as generation did (the property GRPO depends on)."""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from magsrl.common.coords import Convention
from magsrl.models.loading import load_family, load_model, load_processor
from magsrl.models.tiny import (
    MAX_VISUAL_TOKENS,
    TAG_TOKENS,
    build_tiny_model,
    ensure_tiny_model,
    resolve_model,
    tiny_name,
)
from magsrl.proto.tools import zoom_tool
from magsrl.zoom.families import (
    FAMILIES,
    IMAGE_PLACEHOLDER,
    family_for_config,
    resized_size,
    template_text,
)

FAMILY_NAMES = sorted(FAMILIES)
LOGPROB_TOLERANCE = 1e-4  # fp32; measured differences are ~5e-7
NEW_TOKENS = 6
TAG_BIAS = 20.0  # steers sampling onto the tag tokens, so decoding them can be checked
MAX_TINY_BYTES = 1_000_000
TOOL_CALL = '<tool_call>{"name": "zoom", "arguments": {"bbox_2d": [10, 20, 300, 400]}}</tool_call>'
THINK_ZOOM = "<think>..<zoom>[[1,2,3,4]]</zoom></think>"


@dataclass
class Tiny:
    family: str
    path: Path
    model: Any
    processor: Any


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    path = build_tiny_model(tmp_path_factory.mktemp(request.param), family=request.param)
    model = load_model(path).eval()
    return Tiny(request.param, path, model, load_processor(path))


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    import skimage.data

    return [Image.fromarray(skimage.data.astronaut()), Image.fromarray(skimage.data.coffee())]


def conversation() -> list[dict[str, Any]]:
    arguments = {"bbox_2d": [10, 20, 300, 400], "label": "patch"}
    return [
        {"role": "system", "content": "Look closely."},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What is on the left?"}],
        },
        {
            "role": "assistant",
            "content": "<think>too small</think>",
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "zoom", "arguments": json.dumps(arguments)},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_0",
            "content": [
                {"type": "text", "text": "Region 1:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
    ]


def render(tiny: Tiny) -> str:
    return tiny.processor.apply_chat_template(
        conversation(), tools=[zoom_tool()], add_generation_prompt=True
    )


def test_template_renders_tools_images_and_tool_responses(tiny: Tiny) -> None:
    """Qwen2.5-VL's own templates render tools or images, never both, and no images in tool
    messages: a zoom conversation needs all three."""
    text = render(tiny)
    assert text.startswith("<|im_start|>system\nLook closely.\n\n# Tools\n\n")
    assert "<tools>\n" + json.dumps(zoom_tool()) + "\n</tools>" in text
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n' in text
    assert (
        f"<|im_start|>user\n{IMAGE_PLACEHOLDER}What is on the left?<|im_end|>\n"
        "<|im_start|>assistant\n<think>too small</think>\n<tool_call>\n"
        '{"name": "zoom", "arguments": {"bbox_2d": [10, 20, 300, 400], "label": "patch"}}\n'
        "</tool_call><|im_end|>\n"
        f"<|im_start|>user\n<tool_response>\nRegion 1:{IMAGE_PLACEHOLDER}\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n"
    ) in text
    assert text.endswith("<|im_start|>assistant\n")
    assert text.count(IMAGE_PLACEHOLDER) == 2
    # The tokenizer carries the same template (the hf engine renders through it).
    assert tiny.processor.tokenizer.chat_template == template_text(FAMILIES[tiny.family])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_template_defaults_follow_each_family(family: str) -> None:
    """Qwen2.5-VL adds a default system prompt; Qwen3-VL has none. Dict arguments are
    serialised, and consecutive tool results share one user turn."""
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "zoom", "arguments": {"bbox_2d": [1, 2, 3, 4]}}}],
        },
        {"role": "tool", "content": "a"},
        {"role": "tool", "content": [{"type": "image"}]},
    ]
    (text,), _ = render_jinja_template(
        conversations=[messages], chat_template=template_text(FAMILIES[family])
    )
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert text.startswith(system) == (family == "qwen2_5_vl")
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "zoom", "arguments": '
        '{"bbox_2d": [1, 2, 3, 4]}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\na\n</tool_response>\n"
        f"<tool_response>\n{IMAGE_PLACEHOLDER}\n</tool_response><|im_end|>\n"
    ) in text


def completion_logprobs(model: Any, inputs: Any, sequences: torch.Tensor) -> torch.Tensor:
    """A training-style forward over prompt + completion: (B, new) log-probs of the
    completion tokens. mm_token_type_ids must cover the completion too (zeros, text), or
    Qwen2.5-VL silently falls back to 1-D positions and Qwen3-VL raises."""
    prompt_len = inputs["input_ids"].shape[1]
    new = sequences.shape[1] - prompt_len
    mm = inputs["mm_token_type_ids"]
    mm = torch.cat([mm, mm.new_zeros(mm.shape[0], new)], dim=1)
    mask = torch.cat(
        [inputs["attention_mask"], inputs["attention_mask"].new_ones(mm.shape[0], new)], 1
    )
    with torch.no_grad():
        logits = model(
            input_ids=sequences,
            attention_mask=mask,
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            mm_token_type_ids=mm,
        ).logits
    logprobs = torch.log_softmax(logits[:, prompt_len - 1 : -1].float(), dim=-1)  # (B, new, V)
    return logprobs.gather(-1, sequences[:, prompt_len:, None])[..., 0]


def test_generate_then_training_forward_agree(tiny: Tiny, photos: list[Image.Image]) -> None:
    """The learner must score the sampled tokens as the sampler did; this pins the M-RoPE
    positions of image tokens (mm_token_type_ids) in a training forward."""
    tokenizer = tiny.processor.tokenizer
    inputs = tiny.processor(text=render(tiny), images=photos, return_tensors="pt")
    assert set(inputs) >= {"input_ids", "attention_mask", "pixel_values", "image_grid_thw"}
    image_tokens = int((inputs["mm_token_type_ids"] == 1).sum())
    per_image = inputs["image_grid_thw"].prod(-1) // FAMILIES[tiny.family].merge_size ** 2
    assert image_tokens == int(per_image.sum()) and 0 < per_image.max() <= MAX_VISUAL_TOKENS

    tag_ids = tokenizer.convert_tokens_to_ids(list(TAG_TOKENS))
    torch.manual_seed(0)
    with torch.no_grad():
        out = tiny.model.generate(
            **inputs,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=True,
            top_k=0,
            sequence_bias={(i,): TAG_BIAS for i in tag_ids},
            output_logits=True,
            return_dict_in_generate=True,
        )
    new_ids = out.sequences[0, inputs["input_ids"].shape[1] :]
    assert len(new_ids) == NEW_TOKENS and set(new_ids.tolist()) <= set(tag_ids)
    # Tags are added, non-special tokens: decoding for the parsers keeps every one.
    decoded = tokenizer.decode(new_ids, skip_special_tokens=True)
    assert decoded == "".join(tokenizer.convert_ids_to_tokens(new_ids.tolist()))

    # Generation-time log-probs come from the raw logits (before the bias), as a sampler
    # reports them.
    sampled = torch.stack(
        [
            torch.log_softmax(step[0].float(), -1)[t]
            for step, t in zip(out.logits, new_ids, strict=True)
        ]
    )
    trained = completion_logprobs(tiny.model, inputs, out.sequences)[0]
    assert (sampled - trained).abs().max().item() < LOGPROB_TOLERANCE


def test_left_padded_batch_agrees(tiny: Tiny, photos: list[Image.Image]) -> None:
    """RL batches are left-padded prompts with different image counts."""
    short = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    texts = [render(tiny), tiny.processor.apply_chat_template(short, add_generation_prompt=True)]
    inputs = tiny.processor(
        text=texts,
        images=[*photos, photos[1]],
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    assert inputs["attention_mask"][1, 0] == 0  # the short prompt is padded on the left
    with torch.no_grad():
        out = tiny.model.generate(
            **inputs,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new_ids = out.sequences[:, inputs["input_ids"].shape[1] :]
    sampled = torch.log_softmax(torch.stack(out.logits, 1).float(), -1)  # (B, new, V)
    sampled = sampled.gather(-1, new_ids[..., None])[..., 0]
    trained = completion_logprobs(tiny.model, inputs, out.sequences)
    assert (sampled - trained).abs().max().item() < LOGPROB_TOLERANCE


def test_resized_size_matches_the_processor(tiny: Tiny) -> None:
    """Qwen2.5-VL boxes are pixels of the resized image: the size must be exactly the
    processor's, including images below min_pixels and very elongated ones."""
    family = FAMILIES[tiny.family]
    processor = tiny.processor
    min_pixels, max_pixels = processor.pixel_bounds()
    for width, height in [(512, 512), (600, 400), (37, 1000), (2000, 30), (10, 12), (1001, 873)]:
        image = Image.new("RGB", (width, height), (120, 30, 200))
        grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
        actual = (int(grid[2]) * family.patch_size, int(grid[1]) * family.patch_size)
        assert resized_size(width, height, family, min_pixels, max_pixels) == actual
        tokens = int(grid.prod()) // family.merge_size**2
        assert family.visual_tokens(width, height, min_pixels, max_pixels) == tokens


def test_tokenizer_round_trips_tool_calls_and_tags(tiny: Tiny) -> None:
    tokenizer = tiny.processor.tokenizer
    for text in (TOOL_CALL, THINK_ZOOM):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    for tag in TAG_TOKENS:
        assert len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1
    for number in (0, 7, 42, 300, 999, 1000):  # box coordinates stay short
        assert len(tokenizer(f", {number}", add_special_tokens=False)["input_ids"]) <= 3
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tiny.model.generation_config.eos_token_id == eos
    assert tokenizer.decode([eos], skip_special_tokens=True) == ""


def test_files_size_and_family(tiny: Tiny) -> None:
    assert (tiny.path / "model.safetensors").stat().st_size < MAX_TINY_BYTES
    assert load_family(tiny.path) is FAMILIES[tiny.family]
    assert family_for_config(tiny.model.config) is FAMILIES[tiny.family]
    assert type(tiny.model).__name__ == tiny.model.config.architectures[0]
    restored = pickle.loads(pickle.dumps(tiny.processor))  # worker processes get a copy
    assert restored.image_token_id == tiny.processor.image_token_id


def test_real_checkpoint_layout_and_pixel_overrides(tiny: Tiny, tmp_path: Path) -> None:
    """Released checkpoints keep image settings in a flat preprocessor_config.json (Qwen2.5-VL
    with min_pixels/max_pixels); the loader reads it with the PIL processor, and the
    caller's bounds win over the file's."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny.path, folder)
    processor_config = json.loads((folder / "processor_config.json").read_text())
    flat = dict(processor_config["image_processor"])
    size = flat.pop("size")
    flat.update(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"] * 4)
    flat["image_processor_type"] = "Qwen2VLImageProcessorFast"
    (folder / "preprocessor_config.json").write_text(json.dumps(flat))
    (folder / "processor_config.json").unlink()
    assert load_processor(folder).pixel_bounds() == (
        size["shortest_edge"],
        size["longest_edge"] * 4,
    )
    overridden = load_processor(folder, min_pixels=1000, max_pixels=20000)
    assert overridden.pixel_bounds() == (1000, 20000)


def test_family_lookup() -> None:
    assert family_for_config({"model_type": "qwen2_vl"}).name == "qwen2_5_vl"
    assert family_for_config({"model_type": "qwen3_vl_moe"}).name == "qwen3_vl"
    assert FAMILIES["qwen2_5_vl"].convention is Convention.QWEN2_5_VL
    assert FAMILIES["qwen3_vl"].convention is Convention.QWEN3_VL
    with pytest.raises(ValueError, match="not a supported"):
        family_for_config({"model_type": "llama"})


def test_build_is_deterministic(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", family="qwen3_vl", seed=1)
    second = build_tiny_model(tmp_path / "b", family="qwen3_vl", seed=1)
    other = build_tiny_model(tmp_path / "c", family="qwen3_vl", seed=2)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_ensure_and_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # the default cache lives under ~/.cache
    path = ensure_tiny_model("qwen2_5_vl", root=tmp_path / "models")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model("qwen2_5_vl", root=tmp_path / "models") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert path.name == tiny_name("qwen2_5_vl")
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no leftovers

    resolved = resolve_model("tiny")
    assert resolved == tmp_path / ".cache" / "magsrl" / "models" / "tiny-qwen2_5_vl"
    assert resolve_model("tiny-qwen2_5_vl") == resolved
    assert resolve_model(str(path)) == path
    assert resolve_model("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"
