"""Maps a box the model wrote, in its family's convention and relative to any image it has
seen (the original or an earlier crop), onto a pixel crop of the original image."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from magsrl.common.coords import BoxError, Convention, check_box, from_norm, to_crop_box, to_norm

FrameFn = Callable[[int, int], tuple[int, int]]


@dataclass(frozen=True)
class ImageSlot:
    """An image in the conversation: index 0 is the original, k the k-th crop."""

    width: int
    height: int
    origin: tuple[int, int, int, int]  # the region of the original it shows, in pixels


def original_slot(width: int, height: int) -> ImageSlot:
    return ImageSlot(width, height, (0, 0, width, height))


def to_original_crop(
    box: Sequence[object],
    img_idx: int,
    slots: Sequence[ImageSlot],
    convention: Convention,
    frame_size: FrameFn,
    original: tuple[int, int],
    min_side: int,
) -> tuple[int, int, int, int]:
    """The pixel crop of the original for ``box`` on image ``img_idx``; BoxError says why not."""
    if not 0 <= img_idx < len(slots):
        raise BoxError(
            f"img_idx {img_idx} does not exist: images 0..{len(slots) - 1} are "
            "available (0 is the original)"
        )
    slot = slots[img_idx]
    frame = frame_size(slot.width, slot.height) if convention is Convention.QWEN2_5_VL else None
    nx1, ny1, nx2, ny2 = to_norm(check_box(box), convention, (slot.width, slot.height), frame)
    if nx2 <= 0 or ny2 <= 0 or nx1 >= 1 or ny1 >= 1:
        raise BoxError(f"the box lies outside image {img_idx}")
    # Clamp within the image the model looked at, so a box on a crop never reaches past it.
    nx1, ny1, nx2, ny2 = max(nx1, 0.0), max(ny1, 0.0), min(nx2, 1.0), min(ny2, 1.0)
    x0, y0, x1, y1 = slot.origin
    ow, oh = original
    norm = (
        (x0 + nx1 * (x1 - x0)) / ow,
        (y0 + ny1 * (y1 - y0)) / oh,
        (x0 + nx2 * (x1 - x0)) / ow,
        (y0 + ny2 * (y1 - y0)) / oh,
    )
    return to_crop_box(norm, original, min_side)  # type: ignore[return-value]


def from_original(
    box: Sequence[int], convention: Convention, original: tuple[int, int], frame_size: FrameFn
) -> list[float]:
    """A pixel box of the original in the model's convention (to echo back to it)."""
    ow, oh = original
    norm = (box[0] / ow, box[1] / oh, box[2] / ow, box[3] / oh)

    frame = frame_size(ow, oh) if convention is Convention.QWEN2_5_VL else None
    return list(from_norm(norm, convention, original, frame))
