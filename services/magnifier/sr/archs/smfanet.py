"""SMFANet (ECCV 2024): self-modulation feature aggregation SR, the network Mags-RL cites.

Key names follow the official `Zheng-MJ/SMFANet` repository. No weights ship offline: bring a
checkpoint. dim 36 / 8 blocks is SMFANet (197k params at x4); dim 48 / 12 blocks is SMFANet+.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERNEL = 3
GROWTH_RATE = 2.0  # hidden width of the local-detail MLP and of the feed-forward network
PARTIAL_RATE = 0.25  # PCFN convolves only this fraction of its hidden channels spatially
DOWN_SCALE = 8  # SMFA's non-local branch works on an 8x max-pooled map
SMFANET = {"dim": 36, "n_blocks": 8}
SMFANET_PLUS = {"dim": 48, "n_blocks": 12}


class DMlp(nn.Module):
    """Local detail estimation: depthwise 3x3 expand, pointwise mix, GELU, pointwise project."""

    def __init__(self, dim: int, growth_rate: float = GROWTH_RATE) -> None:
        super().__init__()
        hidden = int(dim * growth_rate)
        self.conv_0 = nn.Sequential(
            nn.Conv2d(dim, hidden, KERNEL, padding=1, groups=dim),
            nn.Conv2d(hidden, hidden, 1),
        )
        self.act = nn.GELU()
        self.conv_1 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_1(self.act(self.conv_0(x)))


class PCFN(nn.Module):
    """Partial-convolution feed-forward: a 3x3 conv on the first quarter of hidden channels."""

    def __init__(self, dim: int, growth_rate: float = GROWTH_RATE, p_rate: float = PARTIAL_RATE):
        super().__init__()
        hidden = int(dim * growth_rate)
        self.p_dim = int(hidden * p_rate)
        self.conv_0 = nn.Conv2d(dim, hidden, 1)
        self.conv_1 = nn.Conv2d(self.p_dim, self.p_dim, KERNEL, padding=1)
        self.act = nn.GELU()
        self.conv_2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv_0(x))
        part, rest = x[:, : self.p_dim], x[:, self.p_dim :]
        return self.conv_2(torch.cat([self.act(self.conv_1(part)), rest], dim=1))


class SMFA(nn.Module):
    """Self-modulation feature aggregation: a pooled non-local branch modulates the features,
    a local-detail MLP runs beside it, and a 1x1 conv fuses the two."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_0 = nn.Conv2d(dim, dim * 2, 1)
        self.linear_1 = nn.Conv2d(dim, dim, 1)
        self.linear_2 = nn.Conv2d(dim, dim, 1)
        self.lde = DMlp(dim, GROWTH_RATE)
        self.dw_conv = nn.Conv2d(dim, dim, KERNEL, padding=1, groups=dim)
        self.gelu = nn.GELU()
        self.alpha = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.belt = nn.Parameter(torch.zeros(1, dim, 1, 1))  # "belt" (sic): the official key

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        h, w = f.shape[-2:]
        y, x = self.linear_0(f).chunk(2, dim=1)
        # max(1, ...) keeps crops smaller than 8 px working; the official code would fail there.
        pooled_size = (max(1, h // DOWN_SCALE), max(1, w // DOWN_SCALE))
        x_s = self.dw_conv(F.adaptive_max_pool2d(x, pooled_size))
        x_v = torch.var(x, dim=(-2, -1), keepdim=True)
        modulation = self.gelu(self.linear_1(x_s * self.alpha + x_v * self.belt))
        x_l = x * F.interpolate(modulation, size=(h, w), mode="nearest")
        return self.linear_2(x_l + self.lde(y))


class FMB(nn.Module):
    """Feature modulation block: SMFA then PCFN, each on L2-normalised features, residual."""

    def __init__(self, dim: int, ffn_scale: float = GROWTH_RATE) -> None:
        super().__init__()
        self.smfa = SMFA(dim)
        self.pcfn = PCFN(dim, ffn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.smfa(F.normalize(x)) + x
        return self.pcfn(F.normalize(x)) + x


class SMFANet(nn.Module):
    """Shallow conv, `n_blocks` FMBs with a global residual, conv + pixel-shuffle reconstruction."""

    def __init__(
        self,
        dim: int = SMFANET["dim"],
        n_blocks: int = SMFANET["n_blocks"],
        ffn_scale: float = GROWTH_RATE,
        upscaling_factor: int = 4,
    ) -> None:
        super().__init__()
        self.scale = upscaling_factor
        self.to_feat = nn.Conv2d(3, dim, KERNEL, padding=1)
        self.feats = nn.Sequential(*[FMB(dim, ffn_scale) for _ in range(n_blocks)])
        self.to_img = nn.Sequential(
            nn.Conv2d(dim, 3 * upscaling_factor**2, KERNEL, padding=1),
            nn.PixelShuffle(upscaling_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_feat(x)
        return self.to_img(self.feats(x) + x)


def smfanet_x4() -> SMFANet:
    return SMFANet(**SMFANET, upscaling_factor=4)


def smfanet_plus_x4() -> SMFANet:
    return SMFANet(**SMFANET_PLUS, upscaling_factor=4)
