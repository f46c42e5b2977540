"""Box conventions of the zoom protocol, and the rules that turn a requested box into a crop.

Internally a box is ``[x1, y1, x2, y2]`` normalised to [0, 1] in the original image's frame.
Each convention converts to and from that:

| convention   | meaning                                                       |
|--------------|---------------------------------------------------------------|
| pixel        | absolute pixels of the original image                         |
| norm1        | 0-1 floats (Mini-o3)                                          |
| norm1000     | integers 0-1000 (Qwen3-VL, Qwen-Agent); alias ``qwen3-vl``    |
| qwen2.5-vl   | absolute pixels of the image as the processor resized it      |
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from magsrl.proto.vocab import Convention

Box = tuple[float, float, float, float]
Size = tuple[int, int]  # (width, height)


class BoxError(ValueError):
    """A box the protocol cannot use; the message says why in terms a model or user can fix."""


def check_box(box: Sequence[object]) -> Box:
    if len(box) != 4:
        raise BoxError(f"a box has 4 numbers [x1, y1, x2, y2], got {len(box)}")
    values: list[float] = []
    for v in box:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise BoxError(f"box coordinates must be numbers, got {v!r}")
        if not math.isfinite(v):
            raise BoxError("box coordinates must be finite numbers")
        values.append(float(v))
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise BoxError(f"box {values} is inverted or empty: it needs x1 < x2 and y1 < y2")
    return x1, y1, x2, y2


def _frame(convention: Convention, size: Size, frame_size: Size | None) -> tuple[float, float]:
    if convention is Convention.PIXEL:
        return float(size[0]), float(size[1])
    if convention is Convention.NORM1:
        return 1.0, 1.0
    if convention in (Convention.NORM1000, Convention.QWEN3_VL):
        return 1000.0, 1000.0
    if frame_size is None:
        raise ValueError("the qwen2.5-vl convention needs the processor's resized image size")
    return float(frame_size[0]), float(frame_size[1])


def to_norm(
    box: Sequence[float], convention: Convention | str, size: Size, frame_size: Size | None = None
) -> Box:
    """A box in ``convention`` to [0, 1] in the original frame (no clamping)."""
    fw, fh = _frame(Convention(convention), size, frame_size)
    x1, y1, x2, y2 = box
    return x1 / fw, y1 / fh, x2 / fw, y2 / fh


def from_norm(
    box: Sequence[float], convention: Convention | str, size: Size, frame_size: Size | None = None
) -> Box:
    """A [0, 1] box to ``convention``; integer conventions are rounded."""
    conv = Convention(convention)
    fw, fh = _frame(conv, size, frame_size)
    out = (box[0] * fw, box[1] * fh, box[2] * fw, box[3] * fh)
    if conv is Convention.NORM1:
        return out
    return tuple(float(round(v)) for v in out)  # type: ignore[return-value]


def _fit_span(lo: float, hi: float, min_side: float, limit: int) -> tuple[float, float]:
    # Expand around the centre to min_side, then slide (not shrink) back inside the image,
    # so a small box near an edge keeps its full minimum size.
    if hi - lo < min_side:
        centre = (lo + hi) / 2
        lo, hi = centre - min_side / 2, centre + min_side / 2
    if lo < 0:
        lo, hi = 0.0, hi - lo
    if hi > limit:
        lo, hi = lo - (hi - limit), float(limit)
    return max(lo, 0.0), min(hi, float(limit))


def to_crop_box(norm_box: Sequence[float], size: Size, min_side: int = 28) -> tuple[int, ...]:
    """The integer pixel crop for a [0, 1] box: rejected if it misses the image, otherwise
    clamped, expanded to ``min_side`` around its centre, and kept inside the image."""
    w, h = size
    x1, y1, x2, y2 = (norm_box[0] * w, norm_box[1] * h, norm_box[2] * w, norm_box[3] * h)
    if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
        raise BoxError(f"box lies entirely outside the {w}x{h} image")
    x1, x2 = max(x1, 0.0), min(x2, float(w))
    y1, y2 = max(y1, 0.0), min(y2, float(h))
    left, right = _to_pixels(*_fit_span(x1, x2, min_side, w), w)
    top, bottom = _to_pixels(*_fit_span(y1, y2, min_side, h), h)
    return left, top, right, bottom


def _to_pixels(lo: float, hi: float, limit: int) -> tuple[int, int]:
    # Integer side first, then place it on the centre: flooring and ceiling each end
    # separately would grow a 28-pixel box to 29 whenever it straddles a half pixel.
    side = min(max(math.ceil(hi - lo - 1e-6), 1), limit)
    start = min(max(round((lo + hi) / 2 - side / 2), 0), limit - side)
    return start, start + side
