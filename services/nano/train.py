"""The nano model's training recipe: supervised training from scratch on scripted nano
episodes rendered by the real zoom loop (``magsrl.nano.episodes``), in stages that each show
learning before the next, with their curves written as CSV.

Stages (each a number of optimiser steps over a mix of example kinds):
0. ``vision``: the vision tower alone on crops of the target cell, through an auxiliary
   linear digit head (the text path alone passed it too little gradient to learn);
1. ``read``: the crop alone in a chat, target the round-2 turn (the language model learns
   to read the now-discriminative visual tokens);
2. ``locate+read``: full two-round episodes, loss on both turns (the box and the answer),
   plus no-zoom episodes (the no-zoom arm answers from the view alone: its accuracy is the
   control);
3. ``anneal``: the same at a lower learning rate.

Each example's tensors are computed once (the processor does not run per step). Held-out
scenes (another split seed) are scored teacher-forced every ``eval_every`` steps: cell
accuracy (all four box tokens right), crop accuracy (the digit read from the true crop),
no-zoom accuracy. ``magsrl nano train`` runs it; ``train_nano`` is the Python entry.
"""

from __future__ import annotations

import csv
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from magsrl.data import nano_scenes as ns
from magsrl.models.loading import load_model, load_processor
from magsrl.nano import episodes as ne
from magsrl.nano import model as nano
from magsrl.zoom.families import QWEN2_5_VL, template_text

TRAIN_SPLIT = 1  # scene seeds of training: scene_seed(TRAIN_SPLIT + 1000 * seed, i)
HELD_OUT_SPLIT = 7  # the held-out scenes of the curves; eval uses its own seed


@dataclass
class Stage:
    name: str
    steps: int
    lr: float
    batch: int
    mix: dict[str, float]  # example kind (crop, zoom, direct) -> share of the batch
    round1_weight: float = 1.0  # loss weight of the first (zoom) turn's tokens
    digit_weight: float = 1.0  # loss weight of the answer digit (one token in ~30)
    # Dense supervision of the vision tower alone: a linear digit head, max-pooled over
    # the crop's merged tokens (the text path alone left it at chance; docs/nano.md).
    vision_head: bool = False


@dataclass
class Recipe:
    seed: int = 0
    crop_scenes: int = 800
    train_scenes: int = 1500
    direct_scenes: int = 300
    held_out: int = 96
    eval_every: int = 50
    # One thread: on a shared 2-core machine two threads ran a step 12x slower (1.0 s vs
    # 12 s at batch 16) from oversubscription.
    threads: int = 1
    stages: list[Stage] = field(
        default_factory=lambda: [
            Stage("vision", 200, 2e-3, 32, {"crop": 1.0}, vision_head=True),
            Stage("read", 150, 2e-3, 32, {"crop": 1.0}),
            Stage("locate+read", 900, 2e-3, 16, {"zoom": 0.8, "direct": 0.2}, digit_weight=2.0),
            Stage("anneal", 200, 5e-4, 16, {"zoom": 0.8, "direct": 0.2}, digit_weight=2.0),
        ]
    )


def _scene_seed(recipe: Recipe, split: int, i: int) -> int:
    return ns.scene_seed(split + 1000 * recipe.seed, i)


def build_examples(
    processor: Any, recipe: Recipe, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The precomputed training and held-out tensors."""
    template = template_text(QWEN2_5_VL)
    rng = random.Random(recipe.seed)
    out: dict[str, list[dict[str, Any]]] = {
        "crop": [],
        "zoom": [],
        "direct": [],
        "held_zoom": [],
        "held_direct": [],
    }
    plan = [
        ("crop", TRAIN_SPLIT + 200, recipe.crop_scenes),
        ("zoom", TRAIN_SPLIT, recipe.train_scenes),
        ("direct", TRAIN_SPLIT + 100, recipe.direct_scenes),
        ("held_zoom", HELD_OUT_SPLIT, recipe.held_out),
        ("held_direct", HELD_OUT_SPLIT, recipe.held_out),
    ]
    total = sum(n for _, _, n in plan)
    done = 0
    for kind, split, n in plan:
        for i in range(n):
            scene = ns.make_nano_scene(_scene_seed(recipe, split, i))
            upscale = "crop" if rng.random() < 0.3 else "bicubic"
            if kind == "crop":
                messages = ne.crop_messages(scene, upscale)
            elif kind.endswith("zoom"):
                messages = ne.zoom_messages(scene, upscale)
            else:
                messages = ne.direct_messages(scene)
            out[kind].append(ne.encode(processor, template, messages))
            done += 1
            if progress:
                progress("data", done, total)
    return out


def _weights(labels: torch.Tensor, stage: Stage, end_id: int, digits: set[int]) -> torch.Tensor:
    """Per-token loss weights: the first assistant turn (up to its end-of-turn) gets
    ``round1_weight`` in two-turn rows, the answer digit ``digit_weight``."""
    round1_weight = stage.round1_weight
    w = (labels != ne.IGNORE_INDEX).float()
    for d in digits:
        w[labels == d] *= stage.digit_weight
    for row in range(labels.shape[0]):
        ends = (labels[row] == end_id).nonzero().flatten().tolist()
        if len(ends) >= 2:
            first = (labels[row] != ne.IGNORE_INDEX).nonzero().flatten()[0].item()
            w[row, first : ends[0] + 1] *= round1_weight
    return w


def _loss(model: Any, batch: dict[str, Any], weights: torch.Tensor) -> tuple[torch.Tensor, Any]:
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs)
    logits = out.logits[:, :-1].float()
    target = labels[:, 1:]
    w = weights[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        target.clamp(min=0).reshape(-1),
        reduction="none",
    ).view_as(target)
    loss = (ce * w).sum() / w.sum().clamp(min=1)
    return loss, logits


@torch.no_grad()
def evaluate(
    model: Any, processor: Any, rows_zoom: list[dict[str, Any]], rows_direct: list[dict[str, Any]]
) -> dict[str, float]:
    """Teacher-forced held-out scores: cell accuracy (all four box tokens argmax-right),
    crop accuracy (digit read after the true crop), no-zoom accuracy."""
    tok = processor.tokenizer
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    digits = set(ne.digit_ids(tok))
    coords = {tok.convert_tokens_to_ids(c) for c in nano.coordinate_tokens()}
    model.eval()
    scores: dict[str, list[float]] = {"cell": [], "crop": [], "direct": []}
    for rows, kind in ((rows_zoom, "zoom"), (rows_direct, "direct")):
        for i in range(0, len(rows), 16):
            batch = ne.collate(processor, rows[i : i + 16], pad)
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            pred = logits[:, :-1].argmax(-1)
            target = batch["labels"][:, 1:]
            for r in range(target.shape[0]):
                pos_d = [p for p, t in enumerate(target[r].tolist()) if t in digits]
                right_d = bool(pos_d) and bool(pred[r, pos_d[-1]] == target[r, pos_d[-1]])
                if kind == "zoom":
                    pos_c = [p for p, t in enumerate(target[r].tolist()) if t in coords][:4]
                    scores["cell"].append(float(all(pred[r, p] == target[r, p] for p in pos_c)))
                    scores["crop"].append(float(right_d))
                else:
                    scores["direct"].append(float(right_d))
    model.train()
    return {k: sum(v) / max(1, len(v)) for k, v in scores.items()}


def feature_norms(model: Any, processor: Any, row: dict[str, Any]) -> tuple[float, float]:
    """Mean L2 norm of the merged image features and of the text embeddings (the probe saw
    310 against 1.8; a gap that large drowns the text in the residual stream)."""
    with torch.no_grad():
        pixels = ne.from_u8(processor, row["pixels_u8"])
        feats = model.model.visual(pixels, grid_thw=row["image_grid_thw"])
        feats = getattr(feats, "pooler_output", feats)
        if isinstance(feats, tuple):
            feats = feats[0]
        text = model.model.language_model.embed_tokens.weight
        return float(feats.norm(dim=-1).mean()), float(text.norm(dim=-1).mean())


def _vision_loss(
    model: Any, head: torch.nn.Module, batch: dict[str, Any], digits: set[int]
) -> torch.Tensor:
    """Cross-entropy of the auxiliary digit head on one-image (crop) rows."""
    feats = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
    feats = getattr(feats, "pooler_output", feats)
    if isinstance(feats, tuple):
        feats = feats[0]
    per_image = feats.view(batch["image_grid_thw"].shape[0], -1, feats.shape[-1])
    logits = head(per_image).max(dim=1).values
    order = sorted(digits)
    target = []
    for row in batch["labels"]:
        (tid,) = [t for t in row.tolist() if t in digits][-1:]
        target.append(order.index(tid))
    return torch.nn.functional.cross_entropy(logits, torch.tensor(target))


def _lr(stage: Stage, step: int) -> float:
    warm = min(1.0, (step + 1) / 30)
    return stage.lr * warm * (0.5 + 0.5 * math.cos(math.pi * step / max(1, stage.steps)))


def train_nano(
    out_dir: Path,
    recipe: Recipe | None = None,
    curves_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Builds, trains and saves the nano model to ``out_dir``; returns the final scores.
    The curve (step, stage, loss, held-out scores) goes to ``curves_dir/curve.csv``."""
    recipe = recipe or Recipe()
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    nano.build_untrained(staging, seed=recipe.seed)
    processor = load_processor(staging)
    model = load_model(staging)
    model.train()
    started = time.perf_counter()
    data = build_examples(processor, recipe, progress)
    count = sum(len(v) for v in data.values())
    log(f"data: {count} examples in {time.perf_counter() - started:.0f} s")
    pad = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    end_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    digits = set(ne.digit_ids(processor.tokenizer))
    # Stage 0's auxiliary digit head on the merged visual tokens (dropped afterwards).
    head = torch.nn.Linear(model.config.text_config.hidden_size, len(ns.DIGITS))
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    curve: list[dict[str, Any]] = []
    total = sum(s.steps for s in recipe.stages)
    step = 0
    scores = evaluate(model, processor, data["held_zoom"], data["held_direct"])
    for stage in recipe.stages:
        for k in range(stage.steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr(stage, k)
            rows = []
            for kind, share in stage.mix.items():
                rows += rng.sample(data[kind], round(stage.batch * share))
            batch = ne.collate(processor, rows, pad)
            if stage.vision_head:
                loss = _vision_loss(model, head, batch, digits)
            else:
                weights = _weights(batch["labels"], stage, end_id, digits)
                loss, _ = _loss(model, batch, weights)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            row: dict[str, Any] = {
                "step": step,
                "stage": stage.name,
                "loss": round(loss.item(), 5),
                "seconds": round(time.perf_counter() - started, 1),
            }
            if step % recipe.eval_every == 0 or step == total:
                scores = evaluate(model, processor, data["held_zoom"], data["held_direct"])
                img, txt = feature_norms(model, processor, data["held_zoom"][0])
                row.update({**{k2: round(v, 4) for k2, v in scores.items()}})
                row.update(image_norm=round(img, 2), text_norm=round(txt, 2))
                log(
                    f"step {step} {stage.name} loss {loss.item():.3f} cell {scores['cell']:.2f} "
                    f"crop {scores['crop']:.2f} no-zoom {scores['direct']:.2f} "
                    f"|img| {img:.1f} |txt| {txt:.2f}"
                )
            curve.append(row)
            if progress:
                progress(stage.name, step, total)
    model.eval()
    model.save_pretrained(str(staging))
    info = {
        "recipe": {
            "seed": recipe.seed,
            "crop_scenes": recipe.crop_scenes,
            "train_scenes": recipe.train_scenes,
            "direct_scenes": recipe.direct_scenes,
            "stages": [s.__dict__ for s in recipe.stages],
        },
        "held_out_teacher_forced": scores,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    nano.write_recipe(staging, info)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    if curves_dir is not None:
        write_curve(Path(curves_dir), curve)
    return info


def write_curve(folder: Path, curve: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    keys = ["step", "stage", "loss", "seconds", "cell", "crop", "direct", "image_norm", "text_norm"]
    path = folder / "curve.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in curve:
            writer.writerow({k: row.get(k, "") for k in keys})
    return path
