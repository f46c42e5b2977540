"""The pixel values of a step's images, each distinct image decoded and processed once.

A GRPO group is G rollouts of one sample: G copies of the same original, plus each rollout's
own crops. Results carry references into the shared image store (``StoredImage``: the
sha256 of the encoded bytes), so equal images have equal keys, and ``StepImages`` keeps the
processed ``(pixel_values, grid)`` of each key for one learner step: the original is read,
decoded and cut into patches once per group instead of G times (the issue measured 0.26-0.47
s of learner CPU per result before). Results in the legacy inline format (base64 PNGs,
written before the store, or by a worker without one) are still read, keyed by their text,
so they are deduplicated the same way.

Qwen-VL image processors cut each image into patches independently and concatenate them,
so processing image by image gives exactly the tensors of one call over the whole list
(tests/test_image_refs.py checks it against the old path); ``FastPixels`` computes them
bit for bit as the processor does, without its float64 pass.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from magsrl.common.image_blobs import ImageBlobStore
from magsrl.proto.rollout import RolloutResult
from magsrl.proto.stored_image import StoredImage
from magsrl.trainer.fast_pixels import FastPixels


class StepImages:
    """Processed images by key, for one step (create one per step; it holds tensors)."""

    def __init__(
        self, processor: Any, store: ImageBlobStore | None, pixels: FastPixels | None = None
    ) -> None:
        """``pixels``: the processor's ``FastPixels`` (built here when not given; a learner
        keeps one, since building it runs the processor once)."""
        self.processor = processor
        self.store = store
        self.pixels = pixels or FastPixels(processor.image_processor)
        self._done: dict[Hashable, tuple[Tensor, Tensor]] = {}
        self.processed = 0  # distinct images decoded and processed (a test counts them)

    def _decode_ref(self, result: RolloutResult, k: int, ref: StoredImage) -> Image.Image:
        if self.store is None:
            raise ValueError(
                f"rollout {result.job_id} refers to stored images but this learner has no "
                "image store: give the trainer the workers' MAGSRL_IMAGE_STORE_DIR (or "
                "MAGSRL_RUNS_DIR)"
            )
        image = _open(self.store.get(ref), result, k)
        if image.size != (ref.width, ref.height):
            raise ValueError(
                f"rollout {result.job_id}: image {k} ({ref.sha256}) decodes to {image.size}, "
                f"its reference says {(ref.width, ref.height)}"
            )
        return image

    def _process(self, key: Hashable, load: Any) -> tuple[Tensor, Tensor]:
        done = self._done.get(key)
        if done is None:
            done = self.pixels(load())  # (patches, D), (3,): the processor's, exactly
            self._done[key] = done
            self.processed += 1
        return done

    def of(self, result: RolloutResult) -> list[tuple[Tensor, Tensor]]:
        """Each image of ``result``, in order: its (patches, D) pixel values and (3,) grid."""
        if result.image_refs:
            return [
                self._process(ref.sha256, lambda k=k, ref=ref: self._decode_ref(result, k, ref))
                for k, ref in enumerate(result.image_refs)
            ]
        return [
            self._process(("b64", data), lambda k=k, data=data: _open_b64(data, result, k))
            for k, data in enumerate(result.images)
        ]

    def batch(self, results: Sequence[RolloutResult]) -> tuple[Tensor | None, Tensor | None]:
        """The pixel values (patches, D) and grids (images, 3) of every image of
        ``results`` in order, as one processor call over them would give; None without
        images."""
        parts = [part for result in results for part in self.of(result)]
        if not parts:
            return None, None
        return torch.cat([p for p, _ in parts]), torch.stack([g for _, g in parts])


def _open(data: bytes, result: RolloutResult, k: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # a corrupt image must name which one failed
        raise ValueError(f"image {k} of rollout {result.job_id} does not decode: {exc}") from exc
    return image


def _open_b64(data: str, result: RolloutResult, k: int) -> Image.Image:
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError as exc:
        raise ValueError(f"image {k} of rollout {result.job_id} is not base64: {exc}") from exc
    return _open(raw, result, k)
