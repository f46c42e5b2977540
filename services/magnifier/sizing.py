"""How big a crop comes out, and which network scale gets it there.

The output follows a pixel budget: the upscale factor is the one that fills ``max_pixels``,
capped at ``max_scale``, and the output never exceeds the budget. A crop already at the
budget is not super-resolved (it is downscaled to fit if larger), nor is one that needs
less than ``min_sr_scale`` of enlargement (it is resized with bicubic). When a family has several
network scales (span-x2, span-x4), the smallest one that reaches the target is used, and
its output is resized down to the exact target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from magsrl.proto.vocab import UpscaleMethod

Method = UpscaleMethod


@dataclass(frozen=True)
class Plan:
    method: Method
    backend: str | None  # the network that runs, when method is sr
    out_size: tuple[int, int]  # (width, height)
    scale: float


def target_scale(width: int, height: int, max_pixels: int, max_scale: float) -> float:
    return min(max_scale, math.sqrt(max_pixels / (width * height)))


def output_size(width: int, height: int, scale: float, max_pixels: int) -> tuple[int, int]:
    out_w, out_h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    # Flooring each side can still land a pixel row over budget for odd aspect ratios.
    while out_w * out_h > max_pixels and out_w > 1 and out_h > 1:
        if out_w >= out_h:
            out_w -= 1
        else:
            out_h -= 1
    return out_w, out_h


def pick_network(scale: float, networks: Mapping[str, int]) -> str:
    """The network of the smallest scale that reaches ``scale``, else the largest."""
    ranked = sorted(networks.items(), key=lambda item: item[1])
    for name, net_scale in ranked:
        if net_scale >= scale - 1e-6:
            return name
    return ranked[-1][0]


def plan_crop(
    width: int,
    height: int,
    *,
    method: Method,
    networks: Mapping[str, int],
    max_pixels: int,
    max_scale: float,
    min_sr_scale: float = 1.0,
) -> Plan:
    """``networks`` maps the usable SR networks for this request to their scales."""
    scale = target_scale(width, height, max_pixels, max_scale)
    if scale <= 1.0:
        # At or over budget already: never upscale, only shrink to fit.
        size = output_size(width, height, scale, max_pixels) if scale < 1.0 else (width, height)
        return Plan("crop", None, size, size[0] / width)
    if method == "crop":
        return Plan("crop", None, (width, height), 1.0)
    size = output_size(width, height, scale, max_pixels)
    if method == "bicubic" or (method == "sr" and scale < min_sr_scale):
        # A network pass for a few percent of enlargement costs a forward and buys nothing.
        return Plan("bicubic", None, size, size[0] / width)
    return Plan("sr", pick_network(scale, networks), size, size[0] / width)
