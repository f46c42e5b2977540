"""Overlapping tiles for large crops, so activation memory stays bounded by the tile size.

Every tile has the same shape (edge tiles slide inward instead of shrinking), so the tiles
of one crop batch together. Each output pixel is taken from exactly one tile: the one whose
interior it lies in, cutting at the middle of each overlap, so every kept pixel had at
least ``overlap`` input pixels of context on each interior side.
"""

from __future__ import annotations

import itertools


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - 2 * overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def ownership(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """For each tile, the [lo, hi) input range whose output it provides."""
    cuts = [0]
    for a, b in itertools.pairwise(starts):
        cuts.append((a + tile + b) // 2)  # middle of the overlap [b, a + tile)
    cuts.append(length)
    return [(cuts[i], cuts[i + 1]) for i in range(len(starts))]


def plan_tiles(
    height: int, width: int, tile: int, overlap: int
) -> list[tuple[int, int, int, int, int, int, int, int]]:
    """Tiles as (y0, x0, th, tw, own_y0, own_y1, own_x0, own_x1) in input pixels."""
    th, tw = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, th, overlap), tile_starts(width, tw, overlap)
    own_y, own_x = ownership(ys, th, height), ownership(xs, tw, width)
    return [
        (y0, x0, th, tw, oy0, oy1, ox0, ox1)
        for y0, (oy0, oy1) in zip(ys, own_y, strict=True)
        for x0, (ox0, ox1) in zip(xs, own_x, strict=True)
    ]
