"""The samples the trace viewer offers to pick from: the first N of a dataset
(``MAGSRL_VIEWER_SAMPLES``), or else a few synthetic scenes drawn in memory. Either set is
made once, on first use, off the event loop."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from magsrl.common.errors import NotFound, ServiceUnavailable
from magsrl.common.images import encode_image, oriented_size
from magsrl.proto.viewer import SampleList, ViewerSample

log = logging.getLogger("magsrl.policy.viewer")

BUILTIN = "builtin"
# Enough variety to show every question kind, small enough to make in well under a second.
BUILTIN_SCENES = 6
BUILTIN_SIZE = (1024, 768)
BUILTIN_SEED = 7
BUILTIN_DIFFICULTY = (0.4, 0.9)  # small targets: scenes where zooming should matter

# What every browser renders; other formats (TIFF...) are converted to PNG when served.
_BROWSER_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
}


@dataclass(frozen=True)
class _Entry:
    info: ViewerSample
    path: Path | None = None  # a dataset sample: read from disk when asked for
    data: bytes | None = None  # a built-in scene: held in memory
    media_type: str = "image/png"


def _builtin() -> list[_Entry]:
    from magsrl.data.synth import KINDS, SynthConfig, make_scene

    width, height = BUILTIN_SIZE
    config = SynthConfig(width=width, height=height, seed=BUILTIN_SEED)
    lo, hi = BUILTIN_DIFFICULTY
    entries = []
    for i in range(BUILTIN_SCENES):
        kind = KINDS[i % len(KINDS)]
        difficulty = lo + (hi - lo) * i / max(1, BUILTIN_SCENES - 1)
        image, fields = make_scene(BUILTIN_SEED * 1000 + i, round(difficulty, 3), kind, config)
        info = ViewerSample(
            id=f"synth-{i}",
            question=fields["question"],
            options=fields.get("options"),
            category=fields.get("category"),
            answer=fields["answer"],
            width=image.width,
            height=image.height,
        )
        entries.append(_Entry(info, data=encode_image(image, "png")))
    return entries


def _oriented(path: Path) -> tuple[int, int, str | None]:
    """Width and height as a viewer shows the image (EXIF-rotated), and its PIL format; reads
    the header only."""
    with Image.open(path) as image:
        width, height = oriented_size(image)
        return width, height, image.format


def _from_dataset(path: str, limit: int) -> list[_Entry]:
    from magsrl.data.loaders import load_dataset

    try:
        samples = load_dataset(path, limit=limit)
    except (ValueError, OSError) as exc:
        raise ServiceUnavailable(
            f"the viewer's samples (MAGSRL_VIEWER_SAMPLES={path}) cannot be read: {exc}"
        ) from exc
    entries = []
    for sample in samples:
        if "://" in sample.image:
            continue  # the viewer serves local files only; the policy fetches no datasets
        try:
            width, height, fmt = _oriented(Path(sample.image))
        except (OSError, ValueError, SyntaxError) as exc:
            log.warning("viewer: skipping sample %s, image unreadable: %s", sample.id, exc)
            continue
        info = ViewerSample(
            id=sample.id,
            question=sample.question,
            options=sample.options,
            category=sample.category,
            answer=sample.answer,
            width=width,
            height=height,
        )
        media_type = _BROWSER_TYPES.get(fmt or "", "")
        entries.append(_Entry(info, path=Path(sample.image), media_type=media_type))
    return entries


def _read(entry: _Entry) -> bytes:
    assert entry.path is not None
    if entry.media_type:
        return entry.path.read_bytes()
    with Image.open(entry.path) as image:  # not browser-displayable: sent as PNG
        return encode_image(image.convert("RGB"), "png")


class SampleStore:
    def __init__(self, dataset: str | None, limit: int) -> None:
        self.dataset = dataset
        self.limit = limit
        self._entries: dict[str, _Entry] | None = None
        self._lock = asyncio.Lock()

    @property
    def source(self) -> str:
        return self.dataset or BUILTIN

    async def _all(self) -> dict[str, _Entry]:
        async with self._lock:
            if self._entries is None:
                if self.dataset:
                    entries = await asyncio.to_thread(_from_dataset, self.dataset, self.limit)
                else:
                    entries = await asyncio.to_thread(_builtin)
                # setdefault keeps the first of two samples that share an id.
                by_id: dict[str, _Entry] = {}
                for entry in entries:
                    by_id.setdefault(entry.info.id, entry)
                self._entries = by_id
            return self._entries

    async def list(self) -> SampleList:
        entries = await self._all()
        return SampleList(source=self.source, data=[e.info for e in entries.values()])

    async def image(self, sample_id: str) -> tuple[bytes, str]:
        """The image bytes and their media type."""
        entry = (await self._all()).get(sample_id)
        if entry is None:
            raise NotFound(
                f"unknown sample id {sample_id!r}; GET /v1/viewer/samples lists them",
                param="sample_id",
            )
        if entry.data is not None:
            return entry.data, entry.media_type
        try:
            data = await asyncio.to_thread(_read, entry)
        except OSError as exc:
            raise NotFound(
                f"the image of sample {sample_id!r} is no longer readable: {exc}",
                param="sample_id",
            ) from exc
        return data, entry.media_type or "image/png"
