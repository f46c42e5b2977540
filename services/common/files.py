"""Atomic writes: a reader sees the old file (or folder) or the complete new one, never a
half-written one, even if the writer is killed mid-way.

Every writer works on a temporary name in the target's own folder (so the final
``os.replace`` is a rename within one filesystem, which POSIX makes atomic), then renames it
into place; a failure removes the temporary. Files are fsynced before the rename, so a crash
just after it cannot expose an empty file still in the page cache.

- ``atomic_path``: a temporary path for writers that take a path (safetensors, PIL, torch);
- ``atomic_write_text`` / ``atomic_write_bytes``: the common cases in one call;
- ``atomic_directory``: the same for a folder (a saved model, an adapter).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: Path, *, mode: int | None = None, suffix: str = ".tmp") -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success the file written there becomes
    ``path``. ``mode`` sets its permissions (a temporary file is 0600 otherwise); ``suffix``
    keeps an extension a writer may insist on (PIL picks the format from it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(
    path: Path, text: str, *, encoding: str = "utf-8", mode: int | None = None
) -> None:
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_text(text, encoding=encoding)


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yields a temp folder beside ``path``; on success it becomes ``path`` by rename, so a
    reader never sees a half-written folder. An existing ``path`` is moved aside first (one
    folder per version is the usual case, and that rename is then the only step)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, aside / path.name)
            os.replace(tmp, path)
            shutil.rmtree(aside)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
