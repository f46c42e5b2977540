"""Box conventions and crop rules of the zoom protocol (pure functions)."""

from __future__ import annotations

import math

import pytest

from magsrl.common.coords import BoxError, Convention, check_box, from_norm, to_crop_box, to_norm

SIZE = (1000, 600)
FRAME = (812, 476)  # a Qwen2.5-VL processor resize of SIZE (multiples of 28, aspect kept)


@pytest.mark.parametrize(
    ("convention", "box", "frame"),
    [
        pytest.param(Convention.PIXEL, (100, 50, 400, 300), None, id="pixel"),
        pytest.param(Convention.NORM1, (0.1, 0.0833, 0.4, 0.5), None, id="norm1"),
        pytest.param(Convention.NORM1000, (100, 83, 400, 500), None, id="norm1000"),
        pytest.param(Convention.QWEN3_VL, (100, 83, 400, 500), None, id="qwen3-vl"),
        pytest.param(Convention.QWEN2_5_VL, (81, 40, 325, 238), FRAME, id="qwen2.5-vl"),
    ],
)
def test_round_trip_through_norm(
    convention: Convention, box: tuple[float, ...], frame: tuple[int, int] | None
) -> None:
    norm = to_norm(box, convention, SIZE, frame)
    assert all(0 <= v <= 1 for v in norm)
    back = from_norm(norm, convention, SIZE, frame)
    assert back == pytest.approx(box, abs=1e-9)


def test_conventions_agree_on_the_same_region() -> None:
    """The same physical region in every convention maps to one normalised box."""
    pixel = to_norm((250, 150, 500, 450), "pixel", SIZE)
    assert to_norm((0.25, 0.25, 0.5, 0.75), "norm1", SIZE) == pytest.approx(pixel)
    assert to_norm((250, 250, 500, 750), "norm1000", SIZE) == pytest.approx(pixel)
    resized = (0.25 * FRAME[0], 0.25 * FRAME[1], 0.5 * FRAME[0], 0.75 * FRAME[1])
    assert to_norm(resized, "qwen2.5-vl", SIZE, FRAME) == pytest.approx(pixel)


def test_qwen25_needs_the_resized_frame() -> None:
    with pytest.raises(ValueError, match="resized"):
        to_norm((1, 2, 3, 4), "qwen2.5-vl", SIZE)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        pytest.param((1, 2, 3), "4 numbers", id="three-numbers"),
        pytest.param((math.nan, 0, 10, 10), "finite", id="nan"),
        pytest.param((0, 0, math.inf, 10), "finite", id="inf"),
        pytest.param((10, 0, 5, 10), "inverted", id="inverted-x"),
        pytest.param((0, 10, 10, 10), "inverted", id="empty-y"),
        pytest.param(("a", 0, 10, 10), "numbers", id="string"),
        pytest.param((True, 0, 10, 10), "numbers", id="bool"),
    ],
)
def test_check_box_rejects(box: tuple[object, ...], message: str) -> None:
    with pytest.raises(BoxError, match=message):
        check_box(box)


def test_small_box_expands_around_centre() -> None:
    norm = to_norm((500, 300, 510, 305), "pixel", SIZE)
    x1, y1, x2, y2 = to_crop_box(norm, SIZE, min_side=28)
    assert (x2 - x1, y2 - y1) == (28, 28)
    assert (x1 + x2) / 2 == pytest.approx(505, abs=1)
    assert (y1 + y2) / 2 == pytest.approx(302.5, abs=1)


def test_small_box_at_edge_slides_inside_and_keeps_min_size() -> None:
    norm = to_norm((995, 0, 1000, 4), "pixel", SIZE)
    assert to_crop_box(norm, SIZE, min_side=28) == (972, 0, 1000, 28)


def test_box_partly_outside_is_clamped() -> None:
    norm = to_norm((-100, -50, 200, 700), "pixel", SIZE)
    assert to_crop_box(norm, SIZE) == (0, 0, 200, 600)


def test_box_entirely_outside_is_an_error() -> None:
    with pytest.raises(BoxError, match="outside"):
        to_crop_box(to_norm((1100, 0, 1200, 50), "pixel", SIZE), SIZE)


def test_image_smaller_than_min_side() -> None:
    assert to_crop_box((0.2, 0.2, 0.3, 0.3), (20, 10), min_side=28) == (0, 0, 20, 10)
