"""Scripted nano episodes rendered exactly as the zoom loop renders them: the real
``ZoomLoop`` builds the messages (system prompt, question, feedback, captions) and an
in-process magnifier makes the crops with the magnifier's own sizing plan, so what the nano
model is trained on is what it is served (train == serve).

``episode_text(scene)`` gives the conversation as the engine sees it plus the scripted
assistant turns; ``encode`` turns it into model inputs with labels on the assistant turns.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from magsrl.data import nano_scenes as ns
from magsrl.magnifier.sizing import plan_crop
from magsrl.proto.images import ImageInfo
from magsrl.proto.magnifier import Crop, ZoomResponse
from magsrl.proto.prompts import format_box
from magsrl.zoom.families import END_OF_TURN, QWEN2_5_VL, resized_size
from magsrl.zoom.loop import LoopOptions, ZoomLoop

IGNORE_INDEX = -100
MAX_SCALE = 4.0  # the magnifier's default max_scale
CROP_MAX_PIXELS = 512 * 512  # the loop's default crop budget


def round1_text(scene: ns.NanoScene) -> str:
    return f"<think>framed label <zoom>[{format_box(scene.view_box)}]</zoom></think>"


def round2_text(answer: str) -> str:
    return f"<rethink>label</rethink><answer>{answer}</answer>"


def direct_text(answer: str) -> str:
    return f"<think>label</think><answer>{answer}</answer>"


class LocalMagnifier:
    """The magnifier client's two calls the loop makes, in-process: crops sized by the
    magnifier's own plan (``bicubic`` or ``crop``; SR is approximated by bicubic)."""

    def __init__(self) -> None:
        self.images: dict[str, Image.Image] = {}

    async def upload(self, data: bytes) -> ImageInfo:
        image_id = hashlib.sha256(data).hexdigest()
        image = Image.open(io.BytesIO(data)).convert("RGB")
        self.images[image_id] = image
        return ImageInfo(image_id=image_id, width=image.width, height=image.height)

    async def zoom(self, image_id: str, boxes: list[Any], **kw: Any) -> ZoomResponse:
        image = self.images[image_id]
        method = "crop" if kw.get("method") == "crop" else "bicubic"
        crops = []
        for box in boxes:
            x1, y1, x2, y2 = (int(v) for v in box)
            plan = plan_crop(
                x2 - x1,
                y2 - y1,
                method=method,  # type: ignore[arg-type]
                networks={},
                max_pixels=kw.get("max_pixels") or CROP_MAX_PIXELS,
                max_scale=MAX_SCALE,
            )
            crop = image.crop((x1, y1, x2, y2))
            if plan.out_size != crop.size:
                crop = crop.resize(plan.out_size, Image.BICUBIC)
            buf = io.BytesIO()
            crop.save(buf, "JPEG", quality=kw.get("quality") or 95)
            crops.append(
                Crop(
                    box=[x1, y1, x2, y2],
                    width=crop.width,
                    height=crop.height,
                    method=plan.method,  # type: ignore[arg-type]
                    model=None,
                    scale=plan.scale,
                    format="jpeg",
                    b64=base64.b64encode(buf.getvalue()).decode(),
                )
            )
        return ZoomResponse(image_id=image_id, crops=crops, timing_ms={})


@dataclass
class _Engine:
    """What ZoomLoop asks of an engine to build messages: the family and the box frame."""

    family: Any = QWEN2_5_VL
    base_model: str = "nano"

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        from magsrl.nano.model import MIN_PIXELS, VIEW_PIXELS

        return resized_size(width, height, QWEN2_5_VL, MIN_PIXELS, VIEW_PIXELS)


_LOOP = ZoomLoop(_Engine(), LocalMagnifier())  # type: ignore[arg-type]


async def _zoom_episode(scene: ns.NanoScene, upscale: str) -> list[dict[str, Any]]:
    opts = LoopOptions(protocol="tags", upscale=upscale)
    buf = io.BytesIO()
    scene.image.save(buf, "PNG", compress_level=1)
    episode = _LOOP.start(scene.image, buf.getvalue(), None, ns.QUESTION, None, opts)
    again = await _LOOP.observe(episode, round1_text(scene))
    assert again, "the scripted zoom must lead to a second round"
    return [*episode.messages, {"role": "assistant", "content": round2_text(scene.answer)}]


def zoom_messages(scene: ns.NanoScene, upscale: str = "bicubic") -> list[dict[str, Any]]:
    """The two-round conversation the loop holds after the scripted zoom, with the answer."""
    return asyncio.run(_zoom_episode(scene, upscale))


def direct_messages(scene: ns.NanoScene) -> list[dict[str, Any]]:
    """The one-round conversation of the no-zoom arm, with the answer (so no-zoom accuracy
    measures what the view alone shows)."""
    opts = LoopOptions(protocol="tags", zoom="off")
    msgs = _LOOP.initial_messages(scene.image, ns.QUESTION, None, opts, scene.image.size)
    return [*msgs, {"role": "assistant", "content": direct_text(scene.answer)}]


def crop_messages(scene: ns.NanoScene, upscale: str = "bicubic") -> list[dict[str, Any]]:
    """Stage 1's bootstrap for the vision tower: the true cell's crop alone, as the
    magnifier makes it, with the question and the round-2 answer (not a served format;
    a cheap, dense reading signal: 16 visual tokens instead of 32 and no zoom turn)."""
    magnifier = LocalMagnifier()
    buf = io.BytesIO()
    scene.image.save(buf, "PNG", compress_level=1)

    async def one() -> Image.Image:
        info = await magnifier.upload(buf.getvalue())
        response = await magnifier.zoom(info.image_id, [scene.cell_box], method=upscale)
        data = base64.b64decode(response.crops[0].b64)
        return Image.open(io.BytesIO(data)).convert("RGB")

    crop = asyncio.run(one())
    user = {
        "role": "user",
        "content": [{"type": "image", "image": crop}, {"type": "text", "text": ns.QUESTION}],
    }
    return [user, {"role": "assistant", "content": round2_text(scene.answer)}]


def _images(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    from magsrl.zoom.engine import split_images

    return split_images(messages)


def encode(processor: Any, template: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Model inputs for the whole conversation; labels on every assistant turn's tokens and
    its end-of-turn token. Pixels are stored as uint8 (exactly invertible, 4x smaller)."""
    msgs, images = _images(messages)
    text = processor.tokenizer.apply_chat_template(
        msgs, chat_template=template, add_generation_prompt=False, tokenize=False
    )
    inputs = processor(text=[text], images=images or None, return_tensors="pt")
    ids = inputs["input_ids"][0]
    labels = torch.full_like(ids, IGNORE_INDEX)
    tok = processor.tokenizer
    start = tok.convert_tokens_to_ids("<|im_start|>")
    end = tok.convert_tokens_to_ids(END_OF_TURN)
    head = tok("assistant\n", add_special_tokens=False)["input_ids"]
    positions = (ids == start).nonzero().flatten().tolist()
    for p in positions:
        if ids[p + 1 : p + 1 + len(head)].tolist() != head:
            continue
        q = p + 1 + len(head)
        while ids[q] != end:
            q += 1
        labels[p + 1 + len(head) : q + 1] = ids[p + 1 + len(head) : q + 1]
    out: dict[str, Any] = {"input_ids": ids, "labels": labels}
    if images:
        out["pixels_u8"] = to_u8(processor, inputs["pixel_values"])
        out["image_grid_thw"] = inputs["image_grid_thw"]
    return out


def _norm_columns(processor: Any, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    ip = processor.image_processor
    per_channel = n_cols // 3
    mean = torch.tensor(ip.image_mean).repeat_interleave(per_channel)
    std = torch.tensor(ip.image_std).repeat_interleave(per_channel)
    return mean, std


def to_u8(processor: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    mean, std = _norm_columns(processor, pixel_values.shape[1])
    return ((pixel_values * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


def from_u8(processor: Any, pixels: torch.Tensor) -> torch.Tensor:
    mean, std = _norm_columns(processor, pixels.shape[1])
    return (pixels.float() / 255 - mean) / std


def collate(processor: Any, rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-padded batch with the image inputs and ``mm_token_type_ids`` (without it
    Qwen2.5-VL silently falls back to 1-D positions; /work/shared/environment.md)."""
    n = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        ids[i, :k] = r["input_ids"]
        labels[i, :k] = r["labels"]
        mask[i, :k] = 1
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    batch: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "mm_token_type_ids": (ids == image_token).long(),
    }
    with_images = [r for r in rows if "pixels_u8" in r]
    if with_images:
        batch["pixel_values"] = from_u8(processor, torch.cat([r["pixels_u8"] for r in with_images]))
        batch["image_grid_thw"] = torch.cat([r["image_grid_thw"] for r in with_images])
    return batch


def digit_ids(tokenizer: Any) -> dict[int, str]:
    ids = {}
    for d in ns.DIGITS:
        (tid,) = tokenizer(d, add_special_tokens=False)["input_ids"]
        ids[int(tid)] = d
    return ids
