"""The shared image store: encoded image bytes kept once, under the sha256 of the bytes, where
every rollout worker, the magnifier replicas and the learner can read them. Rollout results
carry a ``StoredImage`` reference (hash, size, format, dimensions) instead of the pixels.

The interface (``ImageBlobStore``) is three calls, synchronous, and safe to call from
several processes and threads at once; async callers wrap them in ``asyncio.to_thread``:

- ``put(data) -> StoredImage``: keeps ``data`` (an encoded image; its header is read for the
  format and size, nothing is decoded) and returns its reference. Putting the same bytes
  again is a no-op that returns the same reference (content addressing: no versioning, no
  overwrite problem, any writer may race any other).
- ``get(ref_or_hash) -> bytes``: the bytes; ``ImageMissing`` when the store has none.
  Given a ``StoredImage``, the size is checked too.
- ``exists(hash) -> bool``.

Hashes are validated as 64 lowercase hex digits before they touch a path, so a reference
read from Redis cannot name a file outside the store. ``FolderStore`` is the default: a
folder on the shared runs volume (``<MAGSRL_RUNS_DIR>/images`` unless
``MAGSRL_IMAGE_STORE_DIR`` says otherwise), files ``<root>/<h[:2]>/<h>`` written atomically
(``magsrl.common.files``), so a reader sees a whole file or none. Another backend (S3, GCS,
a key-value store) plugs in by implementing the same three calls, with the key ``sha256``
and the same no-overwrite semantics; ``open_image_store`` is where it would be chosen.
Nothing here deletes: a run's images are cleaned with its folder policy, not by the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image, UnidentifiedImageError

from magsrl.common.files import atomic_write_bytes
from magsrl.proto.stored_image import StoredImage

_HEX64 = re.compile(r"[0-9a-f]{64}")
_FORMATS = {
    "PNG": "png",
    "JPEG": "jpeg",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
}


class ImageMissing(LookupError):
    """The store holds no image under that hash (never put, or the store was cleaned)."""


class BadImageBlob(ValueError):
    """A hash that is not 64 lowercase hex digits, bytes that are not an image, or a stored
    file whose size differs from its reference."""


@runtime_checkable
class ImageBlobStore(Protocol):
    """What any image store provides (see the module docstring)."""

    def put(self, data: bytes) -> StoredImage: ...

    def get(self, ref: StoredImage | str) -> bytes: ...

    def exists(self, sha256: str) -> bool: ...


def check_hash(sha256: str) -> str:
    """``sha256`` if it is 64 lowercase hex digits, else ``BadImageBlob``."""
    if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
        raise BadImageBlob(f"not a sha256 hex digest: {str(sha256)[:80]!r}")
    return sha256


def describe(data: bytes, sha256: str | None = None) -> StoredImage:
    """The reference of encoded image bytes: reads the header only (no pixel decode)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt, (width, height) = probe.format or "", probe.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadImageBlob(f"not an image ({len(data)} bytes): {exc}") from exc
    if fmt not in _FORMATS:
        raise BadImageBlob(f"image format {fmt!r} is not one the store keeps")
    return StoredImage(
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        size=len(data),
        format=_FORMATS[fmt],  # type: ignore[arg-type]
        width=width,
        height=height,
    )


class FolderStore:
    """``ImageBlobStore`` on a folder (a shared volume: NFS, a bind mount, one disk)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))

    def __repr__(self) -> str:
        return f"FolderStore({str(self.root)!r})"

    def path(self, sha256: str) -> Path:
        """Where ``sha256`` lives; confined to the root whatever the input."""
        digest = check_hash(sha256)
        path = self.root / digest[:2] / digest
        if not path.resolve().is_relative_to(self.root):  # a symlinked shard folder
            raise BadImageBlob(f"{digest} resolves outside the store {self.root}")
        return path

    def put(self, data: bytes) -> StoredImage:
        ref = describe(data)
        path = self.path(ref.sha256)
        if path.is_file() and path.stat().st_size == ref.size:
            # Already stored: mark it used now, so ``prune`` keeps what runs still write.
            with contextlib.suppress(OSError):
                os.utime(path)
        else:
            atomic_write_bytes(path, data, mode=0o644)
        return ref

    def get(self, ref: StoredImage | str) -> bytes:
        digest = ref.sha256 if isinstance(ref, StoredImage) else ref
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageMissing(
                f"image {digest} is not in the store {self.root}: every writer and reader must "
                "share it (MAGSRL_IMAGE_STORE_DIR, or the same MAGSRL_RUNS_DIR)"
            ) from None
        if isinstance(ref, StoredImage) and len(data) != ref.size:
            raise BadImageBlob(f"image {digest} has {len(data)} bytes in the store, not {ref.size}")
        return data

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def prune(self, older_than_s: float, now: float | None = None) -> PruneStats:
        """Deletes the images not written (or re-put) for ``older_than_s`` seconds. Every
        writer puts what it uses again (the magnifier each upload, workers each group's
        original and crops), so what a live run needs is never that old. Only files named
        by their hash under a two-character shard are touched; a file that vanishes or
        cannot be deleted (another pruner, a read-only mount) is skipped."""
        cutoff = (time.time() if now is None else now) - older_than_s
        stats = PruneStats()
        for shard in self.root.glob("[0-9a-f][0-9a-f]"):
            for path in shard.iterdir():
                if not _HEX64.fullmatch(path.name) or not path.name.startswith(shard.name):
                    continue
                try:
                    info = path.stat()
                    if info.st_mtime >= cutoff:
                        stats.kept += 1
                        continue
                    path.unlink()
                except OSError:
                    continue
                stats.deleted += 1
                stats.freed_bytes += info.st_size
        return stats


@dataclass
class PruneStats:
    """What one ``prune`` did."""

    deleted: int = 0
    freed_bytes: int = 0
    kept: int = 0


def store_dir(image_store_dir: Path | None, runs_dir: Path | None) -> Path | None:
    """The store folder a service uses: the explicit setting, else ``<runs_dir>/images``."""
    if image_store_dir is not None:
        return image_store_dir
    return runs_dir / "images" if runs_dir is not None else None


def open_image_store(location: Path | None) -> ImageBlobStore | None:
    """The store at ``location`` (a folder), or None when none is configured."""
    return FolderStore(location) if location is not None else None
