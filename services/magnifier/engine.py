"""The super-resolution engine: loads networks, places them on the device, and upscales
crops through a micro-batcher, tiling the large ones.

One worker thread owns every forward pass, so torch never runs two at once on the same
weights and CPU threads are not oversubscribed.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from prometheus_client import CollectorRegistry, Histogram

from magsrl.common.errors import ResourceExhausted
from magsrl.magnifier.batcher import MicroBatcher
from magsrl.magnifier.config import MagnifierSettings
from magsrl.magnifier.sr.weights import BACKENDS, BackendSpec, build_network
from magsrl.magnifier.tiling import plan_tiles
from magsrl.models.device import pick_device

log = logging.getLogger("magsrl.magnifier.engine")

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class BackendUnavailable(RuntimeError):
    """A backend exists but cannot run here (no weights, no checkpoint)."""


class SREngine:
    def __init__(
        self, settings: MagnifierSettings, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.device = pick_device(settings.device)
        self.dtype = (
            torch.float16 if (self.device.type == "cuda" and settings.fp16) else torch.float32
        )
        if self.device.type == "cpu" and settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sr-forward")
        self._nets: dict[str, torch.nn.Module] = {}
        self._batchers: dict[str, MicroBatcher] = {}
        self._load_lock = asyncio.Lock()
        self.batch_sizes = Histogram(
            "magsrl_sr_batch_size",
            "Crops or tiles per forward pass.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.forward_seconds = Histogram(
            "magsrl_sr_forward_seconds", "Time per SR forward pass.", ["backend"], registry=registry
        )

    # ---- which backends exist -------------------------------------------------------
    def checkpoint_for(self, name: str) -> Path | None:
        return self.settings.smfanet_checkpoint if name == "smfanet-x4" else None

    def unavailable_reason(self, name: str) -> str | None:
        spec = BACKENDS[name]
        if spec.source is None:
            ckpt = self.checkpoint_for(name)
            if ckpt is None:
                return (
                    f"{name} loads from a user-given checkpoint: set "
                    "MAGSRL_SMFANET_CHECKPOINT to its .pth or .safetensors path"
                )
            if not ckpt.exists():
                return f"{name} checkpoint {ckpt} does not exist"
            return None
        if not (self.settings.weights_dir / f"{name}.safetensors").exists():
            return (
                f"weights for {name} are not in {self.settings.weights_dir}; run `magsrl weights`"
            )
        return None

    def available(self) -> dict[str, BackendSpec]:
        return {n: s for n, s in BACKENDS.items() if self.unavailable_reason(n) is None}

    def is_loaded(self, name: str) -> bool:
        return name in self._nets

    # ---- loading --------------------------------------------------------------------
    async def load(self, name: str) -> torch.nn.Module:
        if name in self._nets:
            return self._nets[name]
        async with self._load_lock:
            if name in self._nets:
                return self._nets[name]
            reason = self.unavailable_reason(name)
            if reason:
                raise BackendUnavailable(reason)
            net = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._build, name
            )
            self._nets[name] = net
            self._batchers[name] = MicroBatcher(
                self._forward_fn(name, net),
                self._executor,
                max_batch=self.settings.max_batch,
                wait_s=self.settings.batch_wait_ms / 1000.0,
                batch_sizes=self.batch_sizes,
            )
            log.info("loaded %s on %s (%s)", name, self.device, self.dtype)
            return net

    def _build(self, name: str) -> torch.nn.Module:
        net = build_network(name, self.settings.weights_dir, checkpoint=self.checkpoint_for(name))
        net = net.to(device=self.device, dtype=self.dtype).eval()
        if self.device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        return net

    def _forward_fn(self, name: str, net: torch.nn.Module):
        timer = self.forward_seconds.labels(name)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            # no_grad, not inference_mode: the outputs are stitched and scaled in place
            # afterwards, which inference tensors forbid outside the mode.
            with timer.time(), torch.no_grad():
                x = batch.to(self.device, self.dtype, non_blocking=True)
                if self.device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                try:
                    return net(x).clamp_(0, 1).float().cpu()
                except torch.OutOfMemoryError as exc:  # the server's limit, not the caller's
                    raise ResourceExhausted(
                        f"out of memory upscaling {len(batch)} crop(s) with {name}; retry, "
                        "or lower MAGSRL_MAX_BATCH or MAGSRL_TILE_SIZE"
                    ) from exc

        return forward

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- upscaling ------------------------------------------------------------------
    def scale_of(self, name: str) -> int:
        return BACKENDS[name].scale

    async def upscale(self, name: str, array: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 to (sH, sW, 3) uint8 with network ``name``."""
        await self.load(name)
        batcher = self._batchers[name]
        scale = self.scale_of(name)
        x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255)
        _, h, w = x.shape
        tile, overlap = self.settings.tile_size, self.settings.tile_overlap
        if h <= tile and w <= tile:
            out = await batcher.submit(self._pad_to_bucket(x))
            out = out[:, : h * scale, : w * scale]
        else:
            tiles = plan_tiles(h, w, tile, overlap)
            outs = await asyncio.gather(
                *[batcher.submit(x[:, y0 : y0 + th, x0 : x0 + tw]) for y0, x0, th, tw, *_ in tiles]
            )
            out = torch.empty(3, h * scale, w * scale)
            for (y0, x0, _, _, oy0, oy1, ox0, ox1), t in zip(tiles, outs, strict=True):
                out[:, oy0 * scale : oy1 * scale, ox0 * scale : ox1 * scale] = t[
                    :,
                    (oy0 - y0) * scale : (oy1 - y0) * scale,
                    (ox0 - x0) * scale : (ox1 - x0) * scale,
                ]
        return out.mul_(255).round_().to(torch.uint8).permute(1, 2, 0).numpy()

    def _pad_to_bucket(self, x: torch.Tensor) -> torch.Tensor:
        # Pad small crops up to a bucket multiple so nearby sizes share a batch; the output
        # is cropped back, and replicate padding keeps the border statistics natural.
        bucket = self.settings.bucket
        _, h, w = x.shape
        ph, pw = (-h) % bucket, (-w) % bucket
        if ph == 0 and pw == 0:
            return x
        return F.pad(x.unsqueeze(0), (0, pw, 0, ph), mode="replicate").squeeze(0)
