"""SPAN (Swift Parameter-free Attention Network, NTIRE 2024 efficient SR winner), inference form.

Key names follow the official `hongyuanyu/SPAN` repo, so its basicsr checkpoints load strictly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# The official model normalises with the DIV2K RGB mean and works on a 0..255 scale.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
IMG_RANGE = 255.0
# Conv3XC's training branch widens the channels by this factor before the 3x3 conv.
TRAIN_GAIN = 2
KERNEL = 3
# Sigmoid attention is centred on zero: sigmoid(x) - 0.5.
ATTENTION_CENTRE = 0.5
# Which training-branch keys a Conv3XC checkpoint carries besides `eval_conv`.
_TRAIN_KEYS = ("sk", "conv.0", "conv.1", "conv.2")


def fuse_conv3xc(parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse Conv3XC's training branches into one 3x3 kernel and bias.

    The branch is 1x1 -> 3x3 (valid, on a 1-pixel zero-padded input) -> 1x1, summed with a 1x1
    skip; all linear, so the product of the three kernels plus the centred skip is exact
    (the official repo does the same in `update_params`, which its eval mode always uses).
    """
    w1, b1 = parts["conv.0.weight"][:, :, 0, 0], parts["conv.0.bias"]  # (mid, in)
    w2, b2 = parts["conv.1.weight"], parts["conv.1.bias"]  # (mid2, mid, 3, 3)
    w3, b3 = parts["conv.2.weight"][:, :, 0, 0], parts["conv.2.bias"]  # (out, mid2)
    weight = torch.einsum("om,mkhw,ki->oihw", w3, w2, w1)
    bias = w3 @ (torch.einsum("mkhw,k->m", w2, b1) + b2) + b3
    centre = KERNEL // 2
    weight[:, :, centre, centre] += parts["sk.weight"][:, :, 0, 0]
    return weight, bias + parts["sk.bias"]


class Conv3XC(nn.Module):
    """A re-parameterised 3x3 conv: only the fused `eval_conv` exists at inference."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.eval_conv = nn.Conv2d(c_in, c_out, KERNEL, padding=KERNEL // 2)
        self.register_load_state_dict_pre_hook(self._fuse_training_form)

    @staticmethod
    def _fuse_training_form(
        module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
    ) -> None:
        # Training-form checkpoints hold sk/conv.N beside a possibly stale eval_conv: rebuild
        # eval_conv from the branches and drop them, so strict loading sees only our keys.
        if prefix + "sk.weight" not in state_dict:
            return
        parts = {}
        for key in _TRAIN_KEYS:
            for suffix in ("weight", "bias"):
                name = f"{key}.{suffix}"
                parts[name] = state_dict.pop(prefix + name).detach().float()
        weight, bias = fuse_conv3xc(parts)
        state_dict[prefix + "eval_conv.weight"] = weight
        state_dict[prefix + "eval_conv.bias"] = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eval_conv(x)


class SPAB(nn.Module):
    """Swift parameter-free attention block: three convs, SiLU, and sigmoid self-attention."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c1_r = Conv3XC(channels, channels)
        self.c2_r = Conv3XC(channels, channels)
        self.c3_r = Conv3XC(channels, channels)
        self.act1 = nn.SiLU()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The official code applies an in-place SiLU, so the feature it returns for the final
        # concat is the *activated* c1_r output; the exported ncnn graph confirms it.
        out1 = self.act1(self.c1_r(x))
        out3 = self.c3_r(self.act1(self.c2_r(out1)))
        attention = torch.sigmoid(out3) - ATTENTION_CENTRE
        return (out3 + x) * attention, out1


class SPAN(nn.Module):
    """SPAN with six SPABs; `feature_channels` 48 (or 52), `upscale` 2 or 4."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        feature_channels: int = 48,
        upscale: int = 4,
        img_range: float = IMG_RANGE,
        rgb_mean: tuple[float, float, float] = DIV2K_RGB_MEAN,
    ) -> None:
        super().__init__()
        self.scale = upscale
        self.img_range = img_range
        # A buffer (not a parameter) so it follows .to()/.half(); not persistent because the
        # official checkpoints do not hold it.
        self.register_buffer("mean", torch.tensor(rgb_mean).view(1, 3, 1, 1), persistent=False)
        self.conv_1 = Conv3XC(num_in_ch, feature_channels)
        self.block_1 = SPAB(feature_channels)
        self.block_2 = SPAB(feature_channels)
        self.block_3 = SPAB(feature_channels)
        self.block_4 = SPAB(feature_channels)
        self.block_5 = SPAB(feature_channels)
        self.block_6 = SPAB(feature_channels)
        self.conv_cat = nn.Conv2d(feature_channels * 4, feature_channels, 1)
        self.conv_2 = Conv3XC(feature_channels, feature_channels)
        self.upsampler = nn.Sequential(
            nn.Conv2d(feature_channels, num_out_ch * upscale**2, KERNEL, padding=KERNEL // 2),
            nn.PixelShuffle(upscale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) * self.img_range
        feat = self.conv_1(x)
        out_b1, _ = self.block_1(feat)
        out = out_b1
        for block in (self.block_2, self.block_3, self.block_4, self.block_5):
            out, _ = block(out)
        out_b6, out_b6_c1 = self.block_6(out)
        out = self.conv_cat(torch.cat([feat, self.conv_2(out_b6), out_b1, out_b6_c1], dim=1))
        # No de-normalisation: the official network maps straight back to the 0..1 range.
        return self.upsampler(out)


def span_x4_ch48() -> SPAN:
    return SPAN(feature_channels=48, upscale=4)


def span_x2_ch48() -> SPAN:
    return SPAN(feature_channels=48, upscale=2)


__all__ = ["SPAB", "SPAN", "Conv3XC", "fuse_conv3xc", "span_x2_ch48", "span_x4_ch48"]
