"""SRVGGNetCompact (Real-ESRGAN's compact VGG-style network, e.g. realesr-animevideov3).

Key names follow basicsr/Real-ESRGAN (`body.N`), so their checkpoints load strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERNEL = 3
LEAKY_SLOPE = 0.1  # Real-ESRGAN's choice for act_type="leakyrelu"
ANIMEVIDEO_NUM_CONV = 16  # realesr-animevideov3; the general-purpose x4v3 uses 32


class SRVGGNetCompact(nn.Module):
    """Plain conv stack at low resolution, pixel-shuffle up, plus a nearest-upsampled input."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = ANIMEVIDEO_NUM_CONV,
        upscale: int = 4,
        act_type: str = "prelu",
    ) -> None:
        super().__init__()
        self.scale = upscale
        self.body = nn.ModuleList([nn.Conv2d(num_in_ch, num_feat, KERNEL, padding=1)])
        self.body.append(self._activation(act_type, num_feat))
        for _ in range(num_conv):
            self.body.append(nn.Conv2d(num_feat, num_feat, KERNEL, padding=1))
            self.body.append(self._activation(act_type, num_feat))
        self.body.append(nn.Conv2d(num_feat, num_out_ch * upscale**2, KERNEL, padding=1))
        self.upsampler = nn.PixelShuffle(upscale)

    @staticmethod
    def _activation(act_type: str, num_feat: int) -> nn.Module:
        if act_type == "prelu":
            return nn.PReLU(num_parameters=num_feat)  # one learned slope per channel
        if act_type == "relu":
            return nn.ReLU()
        if act_type == "leakyrelu":
            return nn.LeakyReLU(LEAKY_SLOPE)
        raise ValueError(f"unknown act_type {act_type!r}: use prelu, relu or leakyrelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        # The network only learns the residual over a nearest-neighbour upscale.
        base = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return self.upsampler(out) + base


def compact_x4_animevideo() -> SRVGGNetCompact:
    return SRVGGNetCompact(num_feat=64, num_conv=ANIMEVIDEO_NUM_CONV, upscale=4)
