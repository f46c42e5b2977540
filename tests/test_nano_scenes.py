"""The nano scene family: deterministic, and its geometry keeps the digit illegible in the
model's view but legible in the crop of the box the model is taught to ask for."""

from __future__ import annotations

import numpy as np

from magsrl.data import nano_scenes as ns


def test_same_seed_same_scene_and_different_seeds_differ() -> None:
    """Pins a scene that is not a pure function of its seed (eval's held-out scenes and
    the training split would then drift between runs)."""
    a, b, c = ns.make_nano_scene(11), ns.make_nano_scene(11), ns.make_nano_scene(12)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert (a.answer, a.cell, a.label_box) == (b.answer, b.cell, b.label_box)
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_geometry_numbers_hold() -> None:
    """Pins the design's numbers (docs/nano.md): the digit about 3.5 px in the view (too
    small to read) and 14 px in the crop, one cell per merged visual token."""
    g = ns.geometry()
    assert g["view_side"] == ns.GRID * 28
    assert g["digit_px_view"] <= 4.0
    assert g["digit_px_crop"] >= 12.0
    assert g["digit_px_crop"] / g["digit_px_view"] == ns.GRID


def test_target_inside_its_cell_and_frame_colour_unique() -> None:
    """Pins a label that spills out of its cell (the cell crop would cut the digit) or a
    magenta pixel outside the target (the frame would no longer identify it)."""
    for seed in range(40):
        scene = ns.make_nano_scene(seed)
        cx1, cy1, cx2, cy2 = scene.cell_box
        lx1, ly1, lx2, ly2 = scene.label_box
        assert cx1 <= lx1 < lx2 <= cx2 and cy1 <= ly1 < ly2 <= cy2
        dx1, dy1, dx2, dy2 = scene.digit_box
        assert lx1 < dx1 < dx2 < lx2 and ly1 < dy1 < dy2 < ly2
        assert all(v % 28 == 0 for v in scene.view_box)
        pixels = np.asarray(scene.image).copy()
        pixels[ly1 : ly2 + 1, lx1 : lx2 + 1] = 0
        assert not np.all(pixels == ns.FRAME, axis=-1).any()
        assert scene.answer in ns.DIGITS


def test_answers_and_cells_are_spread() -> None:
    """Pins a biased generator (a constant answer or cell would let a blind model pass)."""
    scenes = [ns.make_nano_scene(ns.scene_seed(3, i)) for i in range(300)]
    answers = {s.answer for s in scenes}
    cells = {s.cell for s in scenes}
    assert answers == set(ns.DIGITS)
    assert len(cells) == ns.GRID * ns.GRID
    top = max(sum(s.answer == d for s in scenes) for d in ns.DIGITS)
    assert top < 0.2 * len(scenes)
