"""RRDBNet (ESRGAN / RealESRGAN_x4plus): 23 residual-in-residual dense blocks, nearest upsampling.

Key names follow basicsr (`conv_first`, `body.N.rdbM.convK`, `conv_up1`, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERNEL = 3
LEAKY_SLOPE = 0.2
# Residual scaling inside dense blocks, as in ESRGAN: stabilises the very deep stack.
RESIDUAL_SCALE = 0.2
UPSAMPLE_STEP = 2  # each conv_up stage doubles the size
DENSE_CONVS = 5


class ResidualDenseBlock(nn.Module):
    """Five densely connected convs; each sees the input and every earlier output."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        for i in range(1, DENSE_CONVS + 1):
            out_ch = num_feat if i == DENSE_CONVS else num_grow_ch
            conv = nn.Conv2d(num_feat + (i - 1) * num_grow_ch, out_ch, KERNEL, padding=1)
            self.add_module(f"conv{i}", conv)
        self.lrelu = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i in range(1, DENSE_CONVS):
            conv = getattr(self, f"conv{i}")
            feats.append(self.lrelu(conv(torch.cat(feats, dim=1))))
        out = getattr(self, f"conv{DENSE_CONVS}")(torch.cat(feats, dim=1))
        return out * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Three dense blocks with an outer scaled residual."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """ESRGAN generator. Scales 1 and 2 fold the input with pixel-unshuffle (as basicsr does)."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet supports scale 1, 2 or 4, not {scale}")
        self.scale = scale
        # The body always upsamples x4, so smaller scales first shrink the input by 4/scale.
        self._unshuffle = 4 // scale
        self.conv_first = nn.Conv2d(num_in_ch * self._unshuffle**2, num_feat, KERNEL, padding=1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, KERNEL, padding=1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, KERNEL, padding=1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, KERNEL, padding=1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, KERNEL, padding=1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, KERNEL, padding=1)
        self.lrelu = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.pixel_unshuffle(x, self._unshuffle) if self._unshuffle > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.interpolate(feat, scale_factor=UPSAMPLE_STEP, mode="nearest")
            feat = self.lrelu(conv(feat))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def rrdbnet_x4plus() -> RRDBNet:
    return RRDBNet(num_feat=64, num_block=23, num_grow_ch=32, scale=4)
