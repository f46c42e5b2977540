"""The ``nano`` scene family: one framed label among clutter, carrying one digit drawn too
small to read in the model's low-resolution view of the whole scene but large in a crop.

Made for the nano model (``magsrl.nano``) to learn on two CPU cores:

- easy to find: the target label has a thick magenta frame that no clutter uses, visible
  at the 112x112 view the nano processor makes of the 448x448 original;
- easy to locate: the background is a colour gradient (red grows with x, green with y), so
  every visual token's pixels carry its position (Qwen2.5-VL's vision tower has only 2-D
  RoPE, no absolute position embedding), and the label sits inside one cell of a 4x4 grid
  aligned with the merged visual-token grid (28 px cells in the view), so the right box is
  that cell: a choice among 16;
- hard to cheat: the digit is about 3.5 px tall in the view and 14 px tall in the crop of
  its cell (as the processor shows it); unframed labels with other digits and shapes fill
  other cells, so reading "any digit" does not answer.

Every scene is a pure function of its seed (``make_nano_scene``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from magsrl.data import synth_draw as sd

SIDE = 448  # the original's side, pixels
GRID = 4  # cells per side; one cell is one merged visual token of the view
CELL = SIDE // GRID  # 112 original pixels
VIEW = 112  # the nano processor's view of the whole scene: GRID * 28
VIEW_CELL = VIEW // GRID  # 28: patch 14 x merge 2
SCALE = VIEW / SIDE  # view pixels per original pixel
DIGITS = tuple("0123456789")
QUESTION = "What digit is on the framed label?"
FRAME = (255, 0, 255)  # magenta: never in the gradient (blue stays low) nor in the clutter
FRAME_PX = 10  # frame thickness, original pixels (2.5 px in the view)
LABEL_SIDE = (78, 94)  # outer side of a clutter label, original pixels
TARGET_SIDE = 84  # the framed label's outer side, centred in its cell
# The digit's centre in its cell: the middle of the patch at rows/columns 42-56 of the
# cell's 112-px crop as the processor shows it (patch 14), so the glyph is in one patch.
DIGIT_CENTRE = 49
DIGIT_FONT_PX = 20  # the bundled font at this size draws digits about 14-15 px tall
DISTRACTORS = (4, 8)  # other occupied cells, inclusive range
LABEL_DISTRACTOR_SHARE = 0.6  # the rest are shapes
SHAPE_COLOURS = ((30, 120, 255), (0, 200, 200), (255, 160, 0), (90, 90, 90), (255, 255, 255))
SHAPES = ("circle", "square", "triangle")
BACKGROUND_BLUE = 70


@dataclass(frozen=True)
class NanoScene:
    """One scene: the original image, the answer and where the target is."""

    image: Image.Image
    answer: str
    cell: tuple[int, int]  # (column, row) of the target's grid cell
    label_box: tuple[int, int, int, int]  # the framed label, original pixels
    digit_box: tuple[int, int, int, int]  # the digit's ink, original pixels
    seed: int

    @property
    def cell_box(self) -> tuple[int, int, int, int]:
        """The target cell in original pixels: the crop the model should ask for."""
        c, r = self.cell
        return (c * CELL, r * CELL, (c + 1) * CELL, (r + 1) * CELL)

    @property
    def view_box(self) -> tuple[int, int, int, int]:
        """The target cell in the view frame (Qwen2.5-VL's box convention): what the model
        writes inside ``<zoom>``."""
        c, r = self.cell
        return (c * VIEW_CELL, r * VIEW_CELL, (c + 1) * VIEW_CELL, (r + 1) * VIEW_CELL)


def background() -> Image.Image:
    """The position-encoding gradient (the same in every scene)."""
    ramp = np.linspace(40, 230, SIDE, dtype=np.float32)
    red = np.broadcast_to(ramp[None, :], (SIDE, SIDE))
    green = np.broadcast_to(ramp[:, None], (SIDE, SIDE))
    blue = np.full((SIDE, SIDE), BACKGROUND_BLUE, dtype=np.float32)
    return Image.fromarray(np.stack([red, green, blue], axis=-1).round().astype(np.uint8))


_BACKGROUND = background()


def _label(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    cell: tuple[int, int],
    digit: str,
    framed: bool,
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """A white card with ``digit`` inside ``cell``, framed in magenta when ``framed``;
    returns the card's and the digit ink's boxes."""
    if framed:
        # The target sits at one place in its cell and its digit inside one vision patch
        # of the cell's crop (docs/nano.md: with the digit jittered across patch borders
        # the from-scratch vision tower stayed at chance reading it).
        side = TARGET_SIDE
        x0 = cell[0] * CELL + (CELL - side) // 2
        y0 = cell[1] * CELL + (CELL - side) // 2
    else:
        side = int(rng.integers(LABEL_SIDE[0], LABEL_SIDE[1] + 1))
        slack = CELL - side
        x0 = cell[0] * CELL + int(rng.integers(2, slack - 1))
        y0 = cell[1] * CELL + int(rng.integers(2, slack - 1))
    card = (x0, y0, x0 + side, y0 + side)
    if framed:
        draw.rectangle(card, fill=FRAME)
        inner = (x0 + FRAME_PX, y0 + FRAME_PX, x0 + side - FRAME_PX, y0 + side - FRAME_PX)
    else:
        draw.rectangle(card, fill=(150, 150, 150))  # a thin grey edge: a card, not a frame
        inner = (x0 + 2, y0 + 2, x0 + side - 2, y0 + side - 2)
    draw.rectangle(inner, fill=(255, 255, 255))
    font = sd.font(DIGIT_FONT_PX)
    left, top, right, bottom = font.getbbox(digit)
    w, h = right - left, bottom - top
    if framed:
        cx, cy = cell[0] * CELL + DIGIT_CENTRE, cell[1] * CELL + DIGIT_CENTRE
    else:
        cx = (inner[0] + inner[2]) // 2 + int(rng.integers(-8, 9))
        cy = (inner[1] + inner[3]) // 2 + int(rng.integers(-8, 9))
    tx, ty = cx - w // 2, cy - h // 2
    draw.text((tx - left, ty - top), digit, font=font, fill=(0, 0, 0))
    return card, (tx, ty, tx + w, ty + h)


def _shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cell: tuple[int, int]) -> None:
    side = int(rng.integers(40, 96))
    x0 = cell[0] * CELL + int(rng.integers(0, CELL - side + 1))
    y0 = cell[1] * CELL + int(rng.integers(0, CELL - side + 1))
    colour = SHAPE_COLOURS[int(rng.integers(len(SHAPE_COLOURS)))]
    sd.draw_shape(
        draw, SHAPES[int(rng.integers(len(SHAPES)))], (x0, y0, x0 + side, y0 + side), colour
    )


def make_nano_scene(seed: int) -> NanoScene:
    """The scene of ``seed``: the same seed gives the same pixels, answer and boxes."""
    rng = np.random.default_rng(seed)
    image = _BACKGROUND.copy()
    draw = ImageDraw.Draw(image)
    cells = [(c, r) for r in range(GRID) for c in range(GRID)]
    order = rng.permutation(len(cells))
    target = cells[int(order[0])]
    n = int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))
    for k in order[1 : 1 + n]:
        if rng.random() < LABEL_DISTRACTOR_SHARE:
            _label(draw, rng, cells[int(k)], DIGITS[int(rng.integers(10))], framed=False)
        else:
            _shape(draw, rng, cells[int(k)])
    answer = DIGITS[int(rng.integers(10))]
    card, ink = _label(draw, rng, target, answer, framed=True)
    return NanoScene(image, answer, target, card, ink, int(seed))


def scene_seed(split_seed: int, index: int) -> int:
    """The seed of scene ``index`` of a split: training and held-out splits use different
    ``split_seed`` values, so they never share a scene."""
    return int(np.random.SeedSequence([split_seed, index]).generate_state(1)[0])


def geometry() -> dict[str, float]:
    """The numbers docs/nano.md quotes: the digit's height in the view and in the crop."""
    ink_heights = []
    font = sd.font(DIGIT_FONT_PX)
    for d in DIGITS:
        _, top, _, bottom = font.getbbox(d)
        ink_heights.append(bottom - top)
    h = float(np.mean(ink_heights))
    return {
        "original_side": SIDE,
        "view_side": VIEW,
        "cell_original": CELL,
        "digit_px_original": h,
        "digit_px_view": h * SCALE,
        "digit_px_crop": h * VIEW / CELL,  # the cell's crop, resized to the VIEW budget
        "frame_px_view": FRAME_PX * SCALE,
    }
