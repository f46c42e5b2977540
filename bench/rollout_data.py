"""Rollout data path benchmark (issue 15, "images by reference"): for a GRPO group of G=8
rollout results of one 3.5 MP JPEG original and 2 crops each,

- bytes per result in Redis (the JSON the worker writes; target <= 50 KB), and
- learner CPU per result: reading, decoding and processing the images into pixel values
  (target <= 50 ms),

for today's path (images inline as base64 PNGs, each result decoded and processed on its own)
and the new one (``image_refs`` into the shared store, each distinct image processed once per
step), measured in the same run on the same images. Also the worker's encode and write time
per result on both paths.

The images: the original is a 2296x1512 (3.47 MP) mosaic of scikit-image's colour photos with
mild sensor noise, saved as a JPEG (quality 90) and decoded to the policy's view exactly as
the worker does (``decode_reduced``; at Qwen2.5-VL's default budget of 12,845,056 pixels it
stays whole, ``--model-max-pixels 1003520``, the deploy default, reduces it to ~1 MP). Each
crop is a 130x120 region upscaled x4 to 520x480 (0.25 MP: within the policy's default crop
budget, ``crop_max_pixels`` 512 x 512, and not a multiple of 28, so the processor resizes
it, as it does the magnifier's crops). The sequence has Qwen2.5-VL's placeholder counts for
those images (from the real processor's grids), two rounds of 256 sampled tokens with their
log-probs, and ~130 template tokens. The processor is the real Qwen2.5-VL PIL image
processor (the tiny model's, built offline, with the real model's pixel bounds).

Run: ``make bench`` or ``.venv/bin/python bench/rollout_data.py [--group 8] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from magsrl.common.image_blobs import FolderStore
from magsrl.common.images import decode_reduced
from magsrl.models.loading import load_processor
from magsrl.models.tiny import ensure_tiny_model
from magsrl.proto.rollout import RolloutResult, Segment
from magsrl.trainer.fast_pixels import FastPixels
from magsrl.trainer.learner_images import StepImages
from magsrl.trainer.trajectory import ImageWriter, decode_images, encode_images
from magsrl.zoom.families import QWEN2_5_VL, resized_size

RESULTS = Path(__file__).parent / "results" / "rollout_data.json"
SIZE = (2296, 1512)  # 3.47 MP
QWEN_MAX_PIXELS = 12_845_056  # Qwen2.5-VL's preprocessor_config.json max_pixels
QWEN_MIN_PIXELS = 3136
SAMPLED = 256  # tokens per round, two rounds
MICRO_BATCH = 4  # grpo.micro_batch_size's default


def photo_mosaic() -> bytes:
    """A 3.5 MP JPEG of real photos (scikit-image ships them), tiled, with sensor noise."""
    from skimage import data

    photos = [
        data.astronaut(),
        data.chelsea(),
        data.coffee(),
        data.rocket(),
        data.hubble_deep_field(),
        data.retina(),
    ]
    canvas = np.zeros((SIZE[1], SIZE[0], 3), dtype=np.uint8)
    tiles = [p for p in photos if p.ndim == 3]
    y = x = 0
    k = 0
    row_h = 0
    while y < SIZE[1]:
        tile = tiles[k % len(tiles)][..., :3]
        h, w = min(tile.shape[0], SIZE[1] - y), min(tile.shape[1], SIZE[0] - x)
        canvas[y : y + h, x : x + w] = tile[:h, :w]
        row_h = max(row_h, h)
        x += w
        k += 1
        if x >= SIZE[0]:
            x, y, row_h = 0, y + row_h, 0
    noise = np.random.default_rng(0).normal(0, 3, canvas.shape)
    noisy = np.clip(canvas + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def crops_of(original: Image.Image, g: int) -> list[Image.Image]:
    rng = random.Random(g)
    out = []
    for _ in range(2):
        x, y = rng.randrange(original.width - 130), rng.randrange(original.height - 120)
        out.append(original.crop((x, y, x + 130, y + 120)).resize((520, 480), Image.BICUBIC))
    return out


def segments_for(images: list[Image.Image], processor, seed: int) -> list[Segment]:
    rng = random.Random(seed)
    grids = processor.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
    tokens = (grids.prod(dim=-1) // processor.image_processor.merge_size**2).tolist()
    pad = processor.image_token_id

    def text(n: int) -> list[int]:
        return [rng.randrange(151_000) for _ in range(n)]

    def sampled() -> Segment:
        logprobs = [-rng.expovariate(2.0) for _ in range(SAMPLED)]
        return Segment(ids=text(SAMPLED), mask=1, logprobs=logprobs)

    observation = text(20)
    for n in tokens[1:]:
        observation += [151652, *[pad] * n, 151653]
    return [
        Segment(ids=[*text(60), 151652, *([pad] * tokens[0]), 151653, *text(40)], mask=0),
        sampled(),
        Segment(ids=observation + text(10), mask=0),
        sampled(),
    ]


def result(k: int, segments: list[Segment], **images: object) -> RolloutResult:
    return RolloutResult(
        job_id=f"bench:0:0:{k}",
        run_id="bench",
        step=0,
        sample_index=0,
        group_index=k,
        version=1,
        policy_model="bench-v1",
        worker="bench",
        segments=segments,
        reward=1.0,
        components={"accuracy": 1.0, "format": 1.0},
        answer="a red car",
        correct=True,
        zooms=2,
        zoom_errors=0,
        rounds=2,
        completion_tokens=2 * SAMPLED,
        elapsed_ms=1234.5,
        **images,  # type: ignore[arg-type]
    )


def legacy_json(r: RolloutResult) -> str:
    """The result as today's code wrote it: plain id lists (no [id, count] runs)."""
    return json.dumps(r.model_dump(mode="python"), separators=(",", ":"))


def cpu_ms(fn, repeats: int) -> tuple[float, float]:
    """Best of ``repeats`` (process CPU ms, wall ms) of ``fn()``."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        best = min(best, ((time.process_time() - c0) * 1e3, (time.perf_counter() - w0) * 1e3))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--model-max-pixels",
        type=int,
        default=QWEN_MAX_PIXELS,
        help="The policy's image budget (MAGSRL_MAX_IMAGE_PIXELS_MODEL): the model's default "
        "keeps the 3.5 MP original whole; the deploy default 1003520 reduces it to ~1 MP.",
    )
    args = parser.parse_args()
    budget = args.model_max_pixels
    g = args.group
    processor = load_processor(ensure_tiny_model("qwen2_5_vl"), QWEN_MIN_PIXELS, budget)
    jpeg = photo_mosaic()

    def target(w: int, h: int) -> tuple[int, int]:
        return resized_size(w, h, QWEN2_5_VL, max_pixels=budget)

    original, _ = decode_reduced(jpeg, max_pixels=64_000_000, target=target)
    groups = [[original, *crops_of(original, k)] for k in range(g)]
    segments = [segments_for(ims, processor, k) for k, ims in enumerate(groups)]

    with tempfile.TemporaryDirectory() as tmp:
        store = FolderStore(Path(tmp))
        # The worker side: each result's images encoded (and written) on both paths.
        inline: list[RolloutResult] = []
        by_ref: list[RolloutResult] = []
        worker_cpu = {"inline": 0.0, "refs": 0.0}
        writer = ImageWriter(store)  # one worker's writer: the original encoded once
        for k, ims in enumerate(groups):
            c0 = time.process_time()
            inline.append(result(k, segments[k], images=encode_images(ims)))
            c1 = time.process_time()
            keys = [("image-id", original.size, original.mode), None, None]
            by_ref.append(result(k, segments[k], image_refs=writer.refs(ims, keys)))
            c2 = time.process_time()
            worker_cpu["inline"] += (c1 - c0) * 1e3
            worker_cpu["refs"] += (c2 - c1) * 1e3
        bytes_inline = [len(legacy_json(r).encode()) for r in inline]
        bytes_refs = [len(r.model_dump_json().encode()) for r in by_ref]

        # The learner side, as a step collates its micro-batches (micro_batch_size 4, the
        # default): today's collate (decode every result's images, one processor call per
        # micro-batch) against the step cache over the store. "process" is the decode and
        # processor work alone; "total" adds assembling each micro-batch's pixel_values (a
        # copy the processor's own concatenation made before).
        chunks = [slice(i, i + MICRO_BATCH) for i in range(0, g, MICRO_BATCH)]

        def before() -> None:
            for chunk in chunks:
                images = [im for r in inline[chunk] for im in decode_images(r.images)]
                processor.image_processor(images=images, return_tensors="pt")

        def after_process() -> None:
            step = StepImages(processor, store, pixels)
            for r in by_ref:
                step.of(r)

        def after_total() -> None:
            step = StepImages(processor, store, pixels)
            for chunk in chunks:
                step.batch(by_ref[chunk])

        pixels = FastPixels(processor.image_processor)
        learner_before = cpu_ms(before, args.repeats)
        learner_process = cpu_ms(after_process, args.repeats)
        learner_after = cpu_ms(after_total, args.repeats)
        store_bytes = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())

    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.processor() or 'cpu'}",
        "group": g,
        "model_max_pixels": budget,
        "original": f"{original.width}x{original.height} from a {len(jpeg)}-byte JPEG",
        "crops": "2 x 520x480 per result",
        "sampled_tokens_per_result": 2 * SAMPLED,
        "redis_bytes_per_result": {
            "before": round(mean(bytes_inline)),
            "after": round(mean(bytes_refs)),
        },
        "learner_cpu_ms_per_result": {
            "before": round(learner_before[0] / g, 1),
            "after": round(learner_process[0] / g, 1),
            "after_with_batch_assembly": round(learner_after[0] / g, 1),
        },
        "learner_wall_ms_per_result": {
            "before": round(learner_before[1] / g, 1),
            "after": round(learner_after[1] / g, 1),
        },
        "worker_encode_cpu_ms_per_result": {
            "before": round(worker_cpu["inline"] / g, 1),
            "after": round(worker_cpu["refs"] / g, 1),
        },
        "store_bytes_per_group": store_bytes,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    suffix = "" if budget == QWEN_MAX_PIXELS else f"-{budget}"
    RESULTS.with_stem(RESULTS.stem + suffix).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    print("\n| per result | before (inline base64 PNGs) | after (image_refs) | target |")
    print("|---|---|---|---|")
    rb, lc, lw, wc = (
        out["redis_bytes_per_result"],
        out["learner_cpu_ms_per_result"],
        out["learner_wall_ms_per_result"],
        out["worker_encode_cpu_ms_per_result"],
    )
    print(f"| bytes in Redis | {rb['before']:,} | **{rb['after']:,}** | ≤ 51,200 |")
    print(
        f"| learner CPU (decode + processor) | {lc['before']} ms | **{lc['after']} ms** | ≤ 50 ms |"
    )
    print(
        f"| learner CPU with micro-batch assembly | {lc['before']} ms | "
        f"{lc['after_with_batch_assembly']} ms | |"
    )
    print(f"| learner wall | {lw['before']} ms | {lw['after']} ms | |")
    print(f"| worker image encode + write CPU | {wc['before']} ms | {wc['after']} ms | |")


if __name__ == "__main__":
    main()
