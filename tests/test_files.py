"""Atomic writes (magsrl.common.files): a reader sees the old content or the new, never a
part, and a failed writer leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from magsrl.common.files import atomic_directory, atomic_path, atomic_write_text


def test_replaces_whole_and_cleans_up(tmp_path: Path) -> None:
    """Pins: a temporary file left beside the target, or the old content kept."""
    target = tmp_path / "sub" / "status.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(target.parent) == ["status.json"]


def test_a_failed_writer_keeps_the_old_file(tmp_path: Path) -> None:
    """Pins: a writer killed mid-way (here: raising) exposing a truncated file."""
    target = tmp_path / "weights.bin"
    target.write_bytes(b"complete")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"par")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"complete"
    assert os.listdir(tmp_path) == ["weights.bin"]


def test_mode_is_applied(tmp_path: Path) -> None:
    """Pins: published files left 0600 (mkstemp's mode), unreadable to other users."""
    target = tmp_path / "w.safetensors"
    with atomic_path(target, mode=0o644) as tmp:
        tmp.write_bytes(b"x")
    assert target.stat().st_mode & 0o777 == 0o644


def test_directory_replaces_an_existing_one(tmp_path: Path) -> None:
    """Pins: a new version merged into the old folder (stale files surviving)."""
    target = tmp_path / "adapter"
    with atomic_directory(target) as tmp:
        (tmp / "stale.bin").write_text("v1")
    with atomic_directory(target) as tmp:
        (tmp / "fresh.bin").write_text("v2")
    assert sorted(os.listdir(target)) == ["fresh.bin"]
    assert sorted(os.listdir(tmp_path)) == ["adapter"]
