"""Qwen-VL pixel values for the learner, bit-for-bit the image processor's, about 10x faster.

Transformers' PIL image processor for Qwen2-VL/Qwen2.5-VL (``Qwen2VLImageProcessorPil``,
transformers/models/qwen2_vl/image_processing_pil_qwen2_vl.py ``_preprocess``) does, per
image: resize to ``smart_resize(h, w)`` (multiples of patch x merge within the pixel
bounds), rescale (uint8 -> float64 x 1/255 -> float32), normalise ((x - mean) / std in
float32, per channel), then patchify (a pure reshape/transpose with the frame repeated
``temporal_patch_size`` times). On CPU the float64 rescale and the normalise dominate: about
50 ms for a 0.25 MP crop, 220 ms for 3.5 MP.

The resize works on uint8 pixels through PIL (``image_transforms.resize``: the identity for
the original, which the worker decoded to the model's frame; a bicubic resize of a crop to a
multiple of 28), and is done here the same way; after it, rescale + normalise is a function
of one uint8 value and the channel: a 3 x 256 table.
``FastPixels`` builds that table by running the processor itself on a calibration image that
holds every value in every channel, then puts each image's uint8 pixels into patch order and
reads them through the table into the float output (numpy; one pass, no float64). It checks
itself on the calibration image (the whole output, bit for bit) and falls back to the
processor for any image it does not cover: another mode than RGB, or a processor of
another kind.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> Any:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    return smart_resize(height, width, factor, min_pixels=min_pixels, max_pixels=max_pixels)


class FastPixels:
    """``processor.image_processor(images=[image])``'s (pixel_values, grid), fast where exact."""

    def __init__(self, image_processor: Any) -> None:
        self.ip = image_processor
        self.table: Tensor | None = None  # (3 * 256,) float32: channel c, value u at 256c + u
        self.fast = 0
        self.slow = 0
        if type(image_processor).__name__ == "Qwen2VLImageProcessorPil":
            try:
                self.table = self._calibrate()
            except Exception:  # a processor configured unlike the one calibrated here
                self.table = None
        self.table_np = self.table.view(3, 256).numpy() if self.table is not None else None

    def _target(self, width: int, height: int) -> tuple[int, int]:
        size = self.ip.size
        factor = self.ip.patch_size * self.ip.merge_size
        h, w = _smart_resize(height, width, factor, size.shortest_edge, size.longest_edge)
        return w, h

    def _slow(self, image: Image.Image) -> tuple[Tensor, Tensor]:
        self.slow += 1
        out = self.ip(images=[image], return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"][0]

    def _calibrate(self) -> Tensor | None:
        """The value table, read off the processor's own output on an image holding every
        uint8 value in every channel; None when the fast path would not match it exactly."""
        side = self.ip.patch_size * self.ip.merge_size * 4
        width, height = self._target(side, side)
        rng = np.random.default_rng(0)
        n = width * height
        raw = np.stack(
            [rng.permutation(np.resize(np.arange(256, dtype=np.uint8), n)) for _ in range(3)],
            axis=-1,
        ).reshape(height, width, 3)
        image = Image.fromarray(raw, "RGB")
        want, _ = self._slow(image)
        self.slow -= 1  # the calibration is not an image of the step
        codes = self._patchify(torch.from_numpy(raw).long() + torch.arange(3) * 256)
        table = torch.full((3 * 256,), float("nan"), dtype=torch.float32)
        table[codes.flatten()] = want.flatten().float()
        if torch.isnan(table).any():
            return None
        # Every (channel, value) must have given one number, and the layout must be theirs.
        got = table[codes]
        if got.shape != want.shape or not torch.equal(got, want):
            return None
        self.table, self.table_np = table, table.view(3, 256).numpy()
        fast, _ = self(image)  # the path images take, on the whole calibration image
        self.fast -= 1
        return table if torch.equal(fast, want) else None

    def _patchify(self, hwc: Tensor) -> Tensor:
        """(H, W, C) -> (grid_h * grid_w, C * T * p * p), as the processor's patchify."""
        p, m, t = self.ip.patch_size, self.ip.merge_size, self.ip.temporal_patch_size
        height, width, channels = hwc.shape
        gh, gw = height // p, width // p
        x = hwc.view(gh // m, m, p, gw // m, m, p, channels)
        x = x.permute(0, 3, 1, 4, 6, 2, 5)  # (gh/m, gw/m, m, m, C, p, p)
        x = x.unsqueeze(5).expand(*x.shape[:5], t, p, p)  # (..., C, T, p, p)
        return x.reshape(gh * gw, channels * t * p * p)

    def __call__(self, image: Image.Image) -> tuple[Tensor, Tensor]:
        """(patches, C * T * p * p) float32 pixel values and the (3,) grid of ``image``."""
        if self.table is None or image.mode != "RGB":
            return self._slow(image)
        self.fast += 1
        target = self._target(*image.size)
        if target != image.size:
            # The processor's resize: the uint8 image through PIL at the processor's
            # resample, reducing_gap None (transformers image_transforms.resize, which
            # np_resize is), so the table applies to its output as to any uint8 image.
            image = image.resize(target, resample=self.ip.resample)
        p, m, t = self.ip.patch_size, self.ip.merge_size, self.ip.temporal_patch_size
        width, height = image.size
        gh, gw = height // p, width // p
        # The uint8 pixels into patch order first (a 1-byte copy), then one table read per
        # value straight into the float output: 3.5 MP in ~60 ms where the processor's
        # float64 pass takes ~220 ms (bench/rollout_data.py).
        hwc = np.asarray(image).reshape(gh // m, m, p, gw // m, m, p, 3)
        patches = np.ascontiguousarray(hwc.transpose(0, 3, 1, 4, 6, 2, 5))  # (.., m, m, C, p, p)
        patches = patches.reshape(gh * gw, 3, p * p)
        out = np.empty((gh * gw, 3, t, p * p), dtype=np.float32)
        for c in range(3):
            out[:, c, 0] = self.table_np[c][patches[:, c]]
            out[:, c, 1:] = out[:, c, :1]
        pixels = torch.from_numpy(out.reshape(gh * gw, 3 * t * p * p))
        return pixels, torch.tensor([1, gh, gw])
