"""The synthetic "needle in a haystack" set: large cluttered scenes with small targets whose
difficulty is known, to check the difficulty judge and to demo and train zooming. The
question kinds live in ``synth_kinds``, the pixels in ``synth_draw``. Run it with
``magsrl data synth --n 200 --out DIR``.

Difficulty d in [0, 1] moves three things together: the object side shrinks geometrically
from ``object_frac[1]`` to ``object_frac[0]`` of the shorter canvas side (never below
``min_object_px``), and the distractor count and the clutter grow linearly over their ranges.
Every scene is a pure function of (seed, difficulty, kind, config).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from magsrl.data import synth_draw as sd
from magsrl.data import synth_kinds as sk
from magsrl.data.sample import Sample, write_jsonl
from magsrl.data.synth_kinds import KINDS, Kind, SceneError
from magsrl.proto.prompts import OPTION_LETTERS

__all__ = ["KINDS", "Kind", "SceneError", "SynthConfig", "generate", "make_scene", "plan_scenes"]

# Lowercase, distinct, no colour or shape names, none inside another: a reply naming one
# word can never match a second.
DEFAULT_WORDS = (
    *("apple", "river", "cloud", "tiger", "lemon", "piano", "rocket", "garden", "silver"),
    *("castle", "forest", "planet", "candle", "window", "bridge", "mango", "zebra", "violin"),
    *("anchor", "basket", "copper", "dragon", "falcon", "harbor", "island", "jacket"),
    *("kettle", "ladder", "marble", "needle", "oyster", "pepper", "quartz", "saddle"),
    *("tunnel", "velvet", "walnut", "meadow", "pencil", "hammer"),
)

MIN_SIDE, MAX_SIDE = 128, 8192
MAX_DISTRACTORS = 1000
MIN_FREE_SIDES = 8  # the shorter canvas side must hold this many of the smallest objects
SIZE_JITTER = 0.1  # +- relative jitter of the object side, so equal difficulties still vary
PNG_COMPRESS_LEVEL = 3  # level 6 is 3x slower on these textures for 10% smaller files
IMAGE_SUFFIX = {"png": ".png", "jpeg": ".jpg"}
# Kinds whose answer survives JPEG at the default quality: the palette keeps its colour names
# through a JPEG round trip (synth_draw), and counts and positions are of whole objects.
# Text stays PNG: a few-pixel glyph is what JPEG's 8x8 blocks blur. Measured on 2048x1536
# scenes: 2.7 MB each as PNG, 0.95 MB as JPEG at quality 90, so `--n 200` of the four kinds
# is about 280 MB instead of 504 MB of PNG.
JPEG_SAFE_KINDS = frozenset({"colour", "count", "position"})

Unit = Annotated[float, Field(ge=0.0, le=1.0)]
ObjectFrac = Annotated[float, Field(gt=0.0, le=0.25)]
Count = Annotated[int, Field(ge=0, le=MAX_DISTRACTORS)]


class SynthConfig(BaseModel):
    """Settings of a synthetic set; saved next to it as ``synth_config.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    width: int = Field(2048, ge=MIN_SIDE, le=MAX_SIDE, description="canvas width, pixels")
    height: int = Field(1536, ge=MIN_SIDE, le=MAX_SIDE, description="canvas height, pixels")
    kinds: tuple[Kind, ...] = Field(
        KINDS, min_length=1, description="question types, assigned to samples round-robin"
    )
    difficulty: tuple[Unit, Unit] = Field(
        (0.0, 1.0), description="LO, HI: difficulties are stratified over it; LO == HI fixes it"
    )
    image_format: Literal["png", "jpeg", "auto"] = Field(
        "png",
        description="png is lossless; auto: jpeg where the answer survives it (JPEG_SAFE_KINDS), "
        "png for text",
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="used when image_format is jpeg")
    seed: int = Field(0, ge=0, description="the whole set is a function of it")
    mc_fraction: Unit = Field(0.5, description="share of multiple-choice questions")
    words: tuple[str, ...] = Field(
        DEFAULT_WORDS,
        min_length=len(sd.PALETTE),
        description="words for text questions: lowercase letters, distinct",
    )
    object_frac: tuple[ObjectFrac, ObjectFrac] = Field(
        (0.008, 0.12),
        description="object side / shorter canvas side, at difficulty 1 and at difficulty 0",
    )
    min_object_px: int = Field(14, ge=8, le=256, description="floor of the object side, pixels")
    distractors: tuple[Count, Count] = Field(
        (2, 60), description="distractor count at difficulty 0 and at difficulty 1"
    )
    clutter: tuple[Unit, Unit] = Field(
        (0.1, 1.0), description="background clutter at difficulty 0 and at difficulty 1"
    )
    max_count: int = Field(7, ge=2, le=20, description="largest answer of a count question")

    @field_validator("kinds", mode="before")
    @classmethod
    def _spelling(cls, kinds: Any) -> Any:
        if isinstance(kinds, str):
            kinds = [k.strip() for k in kinds.split(",") if k.strip()]
        if isinstance(kinds, list | tuple):
            return tuple("colour" if k == "color" else k for k in kinds)
        return kinds

    @field_validator("words")
    @classmethod
    def _words(cls, words: tuple[str, ...]) -> tuple[str, ...]:
        bad = [w for w in words if not (w.isascii() and w.isalpha() and w.islower())]
        if bad:
            raise ValueError(f"words must be lowercase ASCII letters only; fix {bad[:5]}")
        if len(set(words)) != len(words):
            raise ValueError("words must be distinct, or a text answer could be ambiguous")
        return words

    @model_validator(mode="after")
    def _consistent(self) -> SynthConfig:
        for name in ("difficulty", "object_frac", "distractors", "clutter"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}=({lo}, {hi}): the first value must not exceed the second")
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds {list(self.kinds)} repeats a kind; list each once")
        if self.min_object_px * MIN_FREE_SIDES > min(self.width, self.height):
            raise ValueError(
                f"a {self.width}x{self.height} canvas is too small for min_object_px="
                f"{self.min_object_px}; make the shorter side at least "
                f"{self.min_object_px * MIN_FREE_SIDES} or lower min_object_px"
            )
        return self

    def object_side(self, difficulty: float) -> float:
        """The target side in pixels at ``difficulty``, before jitter."""
        small, large = self.object_frac
        frac = large * (small / large) ** difficulty
        return max(self.min_object_px, frac * min(self.width, self.height))


def _lerp(bounds: tuple[float, float], t: float) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * t


def make_scene(
    seed: int | np.random.Generator,
    difficulty: float,
    kind: Kind,
    config: SynthConfig | None = None,
) -> tuple[Image.Image, dict[str, Any]]:
    """One scene and its ``Sample`` fields (all but ``id`` and ``image``). The same seed,
    difficulty, kind and config give the same pixels and fields."""
    cfg = config or SynthConfig()
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty {difficulty} is outside [0, 1]")
    if kind not in sk.PLANS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    jitter = rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)
    side = max(cfg.min_object_px, round(cfg.object_side(difficulty) * jitter))
    n_distractors = round(_lerp(cfg.distractors, difficulty))
    clutter = round(_lerp(cfg.clutter, difficulty), 4)
    layout, distractors = sk.compose(rng, kind, side, difficulty, n_distractors, cfg)
    boxes = [t.box for t in layout.targets]
    union = sk.union_box(boxes)

    image = sd.background(rng, (cfg.width, cfg.height), clutter)
    draw = ImageDraw.Draw(image)
    for item in [*distractors, *layout.targets]:
        sk.draw_item(draw, item)

    area = cfg.width * cfg.height
    box_areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    extra: dict[str, Any] = {
        "kind": kind,
        "difficulty": float(difficulty),
        "seed": None if isinstance(seed, np.random.Generator) else int(seed),
        # The size of one needle: the mean target box, also for count and position.
        "target_frac": round(sum(box_areas) / len(box_areas) / area, 7),
        "bbox_frac": round((union[2] - union[0]) * (union[3] - union[1]) / area, 7),
        "distractors": len(distractors),
        "clutter": clutter,
        "size_px": side,
        "boxes": [list(b) for b in boxes],
        "targets": [t.describe() for t in layout.targets],
    }
    fields: dict[str, Any] = {
        "question": layout.question,
        "bbox": [float(v) for v in union],
        "category": kind,
        "dataset": "synth",
    }
    if rng.random() < cfg.mc_fraction:
        letter = OPTION_LETTERS[layout.choices.index(layout.answer)]
        fields.update(answer=letter, options=list(layout.choices), scorer="mc")
        extra["answer_text"] = layout.answer
    else:
        fields.update(answer=layout.answer, scorer="count" if kind == "count" else "text")
    fields["extra"] = extra
    return image, fields


def plan_scenes(n: int, config: SynthConfig) -> list[tuple[int, float, Kind]]:
    """(scene seed, difficulty, kind) of each of ``n`` samples: kinds round-robin, each kind's
    difficulties stratified over the config's range, in shuffled order. Scene seeds depend
    only on the set's seed and the index, so a larger set extends a smaller one's scenes."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng(config.seed)
    kinds = [config.kinds[i % len(config.kinds)] for i in range(n)]
    lo, hi = config.difficulty
    difficulties = np.zeros(n)
    for kind in config.kinds:
        idx = np.array([i for i, k in enumerate(kinds) if k == kind], dtype=np.int64)
        strata = (np.arange(idx.size) + rng.random(idx.size)) / max(1, idx.size)
        difficulties[idx] = lo + (hi - lo) * rng.permutation(strata)
    seeds = [int(np.random.SeedSequence([config.seed, i]).generate_state(1)[0]) for i in range(n)]
    return [
        (s, min(hi, max(lo, round(float(d), 4))), k)
        for s, d, k in zip(seeds, difficulties, kinds, strict=True)
    ]


def image_format(cfg: SynthConfig, kind: str) -> str:
    """The format a scene of ``kind`` is written in: ``auto`` picks JPEG where it is safe."""
    if cfg.image_format == "auto":
        return "jpeg" if kind in JPEG_SAFE_KINDS else "png"
    return cfg.image_format


def _save(image: Image.Image, path: Path, cfg: SynthConfig, fmt: str) -> None:
    if fmt == "jpeg":
        image.save(path, "JPEG", quality=cfg.jpeg_quality)
    else:
        image.save(path, "PNG", compress_level=PNG_COMPRESS_LEVEL)


def generate(
    n: int,
    out_dir: Path | str,
    config: SynthConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Writes ``n`` scenes to ``out_dir/images/`` and their samples to ``out_dir/data.jsonl``
    (image paths relative to it), plus ``synth_config.json``; returns the JSONL path.
    ``progress`` is called with the number of scenes done after each one."""
    cfg = config or SynthConfig()
    scenes = plan_scenes(n, cfg)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "synth_config.json").write_text(cfg.model_dump_json(indent=2) + "\n")

    def rows() -> Iterator[Sample]:
        for i, (seed, difficulty, kind) in enumerate(scenes):
            image, fields = make_scene(seed, difficulty, kind, cfg)
            sample_id = f"synth-{cfg.seed}-{i:05d}"
            fmt = image_format(cfg, kind)
            rel = f"images/{sample_id}{IMAGE_SUFFIX[fmt]}"
            _save(image, out / rel, cfg, fmt)
            yield Sample(id=sample_id, image=rel, **fields)
            if progress is not None:
                progress(i + 1)

    path = out / "data.jsonl"
    write_jsonl(path, rows())
    return path
