"""The shared image store is bounded: every run's rollouts add originals and crops to it
(about 180 MB a step at 64 rollouts of 3.5 MP), and nothing deleted them. Old images go
when a run ends; what writers still use is re-put, and so stays."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from pydantic import ValidationError

from magsrl.common.image_blobs import FolderStore
from magsrl.trainer.config import TrainerSettings
from magsrl.trainer.runs import RunManager

DAY = 86400.0


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def age(store: FolderStore, sha256: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(store.path(sha256), (then, then))


def test_prune_deletes_only_old_images_and_a_reput_keeps_one(tmp_path: Path) -> None:
    """Pins the store's bound: images not written for the TTL are deleted, younger ones and
    files that are not the store's (no hash name) stay; putting an aged image again (what a
    worker does for each group's original) makes it young, so a live run never loses one."""
    store = FolderStore(tmp_path / "images")
    old, young, reput = png((255, 0, 0)), png((0, 255, 0)), png((0, 0, 255))
    refs = {
        name: store.put(data) for name, data in [("old", old), ("young", young), ("reput", reput)]
    }
    age(store, refs["old"].sha256, 8 * DAY)
    age(store, refs["reput"].sha256, 8 * DAY)
    store.put(reput)  # in use again
    foreign = store.path(refs["old"].sha256).parent / "notes.txt"
    foreign.write_text("not an image of the store")
    os.utime(foreign, (0, 0))

    stats = store.prune(7 * DAY)

    assert (stats.deleted, stats.kept) == (1, 2)
    assert stats.freed_bytes == len(old)
    assert not store.exists(refs["old"].sha256)
    assert store.exists(refs["young"].sha256) and store.exists(refs["reput"].sha256)
    assert foreign.is_file()


def settings(tmp_path: Path, **overrides: object) -> TrainerSettings:
    return TrainerSettings(runs_dir=tmp_path / "runs", tensorboard=False, **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize(("ttl", "left"), [(DAY, False), (None, True)], ids=["ttl", "keep-all"])
def test_a_run_end_prunes_the_store(tmp_path: Path, ttl: float | None, left: bool) -> None:
    """The trainer prunes at each run's end (``image_store_ttl_s``, default 7 days; null keeps
    everything for a store another tool cleans)."""
    s = settings(tmp_path, image_store_ttl_s=ttl)
    store = FolderStore(s.image_store_path())
    ref = store.put(png((1, 2, 3)))
    age(store, ref.sha256, 2 * DAY)

    async def main() -> None:
        async with httpx.AsyncClient() as http:
            await RunManager(s, http)._prune_images()

    asyncio.run(main())
    assert store.exists(ref.sha256) is left


def test_a_run_end_without_a_store_folder_prunes_nothing(tmp_path: Path) -> None:
    """A trainer whose runs made no images (no store folder yet) must not fail the run's end."""

    async def main() -> None:
        async with httpx.AsyncClient() as http:
            await RunManager(settings(tmp_path), http)._prune_images()

    asyncio.run(main())
    assert not (tmp_path / "runs" / "images").exists()


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_ttl_must_be_a_positive_finite_number(tmp_path: Path, bad: float) -> None:
    """A TTL of 0 would delete a live run's images; inf or NaN is no bound at all (issue 16:
    finite numbers only)."""
    with pytest.raises(ValidationError, match="image_store_ttl_s"):
        settings(tmp_path, image_store_ttl_s=bad)
