"""Supervised fine-tuning of a policy on chat transcripts: teaches a model to emit given
assistant turns (a cold start for the zoom format, or a scripted trajectory in tests).

The prompt is rendered exactly as the engines render it (our chat template, the same
processor), so what the model learns here is what it reproduces when served.
Run from Python: ``finetune(model_dir, out_dir, [SFTExample(messages, target)], steps=60)``.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from magsrl.models.loading import load_family, load_model, load_processor
from magsrl.zoom.engine import split_images
from magsrl.zoom.families import END_OF_TURN, template_text

IGNORE_INDEX = -100


@dataclass
class SFTExample:
    messages: list[dict[str, Any]]  # engine format: image parts carry PIL images
    target: str  # the assistant turn to learn, without the end-of-turn token
    tools: list[dict[str, Any]] | None = None


def encode_example(processor: Any, template: str, example: SFTExample) -> dict[str, torch.Tensor]:
    """Processor inputs for prompt + target, with labels only on the target tokens."""
    messages, images = split_images(example.messages)
    prompt = processor.tokenizer.apply_chat_template(
        messages,
        tools=example.tools,
        chat_template=template,
        add_generation_prompt=True,
        tokenize=False,
    )
    images_arg = images or None
    prompt_len = processor(text=[prompt], images=images_arg, return_tensors="pt")[
        "input_ids"
    ].shape[1]
    inputs = processor(
        text=[prompt + example.target + END_OF_TURN], images=images_arg, return_tensors="pt"
    )
    labels = inputs["input_ids"].clone()
    labels[:, :prompt_len] = IGNORE_INDEX
    inputs["labels"] = labels
    return dict(inputs)


def finetune(
    model_dir: Path,
    out_dir: Path,
    examples: list[SFTExample],
    *,
    steps: int = 60,
    lr: float = 5e-3,
    seed: int = 0,
) -> list[float]:
    """Full fine-tuning (the tiny model has ~200k parameters); returns the loss per step."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    family = load_family(model_dir)
    processor = load_processor(model_dir)
    model = load_model(model_dir)
    model.train()
    template = template_text(family)
    batches = [encode_example(processor, template, ex) for ex in examples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    order: list[int] = []
    for _ in range(steps):
        if not order:
            order = list(range(len(batches)))
            rng.shuffle(order)
        loss = model(**batches[order.pop()]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
    model.eval()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(model_dir, out_dir)
    model.save_pretrained(out_dir)
    return losses
