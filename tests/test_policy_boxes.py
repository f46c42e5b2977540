"""Boxes the model writes, in each family's convention and on any image it has seen, mapped
onto crops of the original (pure functions)."""

from __future__ import annotations

import pytest

from magsrl.common.coords import BoxError, Convention
from magsrl.zoom.boxes import ImageSlot, from_original, original_slot, to_original_crop
from magsrl.zoom.families import FAMILIES, resized_size

ORIGINAL = (2048, 1536)


def frame(w: int, h: int) -> tuple[int, int]:
    return resized_size(w, h, FAMILIES["qwen2_5_vl"])


def test_qwen25_boxes_are_in_the_resized_frame() -> None:
    fw, fh = frame(*ORIGINAL)
    assert (fw, fh) != ORIGINAL  # the processor really resized it
    box = [fw * 0.25, fh * 0.5, fw * 0.5, fh * 0.75]
    crop = to_original_crop(
        box, 0, [original_slot(*ORIGINAL)], Convention.QWEN2_5_VL, frame, ORIGINAL, 28
    )
    assert crop == (512, 768, 1024, 1152)


def test_qwen3_boxes_are_0_to_1000() -> None:
    crop = to_original_crop(
        [250, 500, 500, 750],
        0,
        [original_slot(*ORIGINAL)],
        Convention.QWEN3_VL,
        frame,
        ORIGINAL,
        28,
    )
    assert crop == (512, 768, 1024, 1152)


@pytest.mark.parametrize("convention", [Convention.QWEN2_5_VL, Convention.QWEN3_VL])
def test_round_trip_through_the_model_convention(convention: Convention) -> None:
    crop = (300, 200, 900, 700)
    model_box = from_original(crop, convention, ORIGINAL, frame)
    back = to_original_crop(
        model_box, 0, [original_slot(*ORIGINAL)], convention, frame, ORIGINAL, 28
    )
    # Integer conventions quantise: 0-1000 of 2048 px is ~2 px a step.
    assert all(abs(a - b) <= 3 for a, b in zip(back, crop, strict=True))


def test_zoom_into_a_crop_maps_back_to_the_original() -> None:
    """img_idx 1 is the crop of (1000, 500)-(1500, 1000) shown at 512x512: its right half
    is (1250, 500)-(1500, 1000) of the original."""
    slots = [original_slot(*ORIGINAL), ImageSlot(512, 512, (1000, 500, 1500, 1000))]
    crop = to_original_crop(
        [500, 0, 1000, 1000], 1, slots, Convention.QWEN3_VL, frame, ORIGINAL, 28
    )
    assert crop == (1250, 500, 1500, 1000)


def test_box_past_a_crop_is_clamped_to_that_crop() -> None:
    slots = [original_slot(*ORIGINAL), ImageSlot(512, 512, (1000, 500, 1500, 1000))]
    crop = to_original_crop(
        [500, 500, 1500, 1200], 1, slots, Convention.QWEN3_VL, frame, ORIGINAL, 28
    )
    assert crop == (1250, 750, 1500, 1000)


@pytest.mark.parametrize(
    ("box", "img_idx", "says"),
    [
        pytest.param([10, 10, 5, 20], 0, "inverted", id="inverted"),
        pytest.param([1100, 0, 1200, 100], 0, "outside", id="outside"),
        pytest.param([0, 0, 100, 100], 3, "img_idx 3", id="missing-image"),
        pytest.param([0, 0, float("nan"), 10], 0, "finite", id="nan"),
    ],
)
def test_unusable_boxes(box: list[float], img_idx: int, says: str) -> None:
    with pytest.raises(BoxError, match=says):
        to_original_crop(
            box, img_idx, [original_slot(*ORIGINAL)], Convention.QWEN3_VL, frame, ORIGINAL, 28
        )
