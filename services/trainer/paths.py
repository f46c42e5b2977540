"""Where a run may read and write: confined file access for the trainer.

A run's outputs go only under the trainer's runs directory (``output_dir`` names a
subfolder, never a path); its dataset, curriculum and images are read only from the data
roots (``MAGSRL_DATA_ROOTS``) and the runs directory, and a local ``model`` folder also from
the Hugging Face cache and ``MAGSRL_WEIGHTS_ROOTS``, checked after resolving symlinks.
A path outside the roots gets one message whatever exists there, so the API is no oracle
for the trainer's file system. Plain Python: ``runs.py`` calls it, the HTTP layer renders
the errors.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from magsrl.common.errors import BadRequest, Conflict, PayloadTooLarge

# Longer than any real path (Linux PATH_MAX is 4096); longer ones are refused before any
# system call sees them.
MAX_PATH_CHARS = 4096
# A subfolder of the runs directory: one name, no separators, no dot-dot.
RUN_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# A Hugging Face repo id, ``name`` or ``org/name``: never absolute, no ``..`` component.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")
MODEL_CONFIG = "config.json"


def _roots_text(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots)


def confine(
    value: str,
    roots: Sequence[Path],
    param: str,
    *,
    allow: str = "set MAGSRL_DATA_ROOTS on the trainer to allow another",
) -> Path:
    """``value`` resolved (symlinks followed) if it lies under one of ``roots``.

    Outside them, or unreadable, or not a plain file or folder, the error is the same, so
    the message tells nothing about what exists outside the roots.
    """
    refused = BadRequest(
        f"{param} must name a readable file or folder under the trainer's data roots "
        f"({_roots_text(roots)}); {allow}",
        param=param,
    )
    if len(value) > MAX_PATH_CHARS or "\x00" in value:
        raise refused
    resolved = Path(os.path.realpath(value))
    if not any(resolved.is_relative_to(root) for root in roots):
        raise refused
    try:
        mode = resolved.stat().st_mode
    except OSError:
        mode = 0
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or not os.access(resolved, os.R_OK):
        # Inside the roots the trainer's operator owns the tree: naming the miss is fine.
        raise BadRequest(
            f"{param} {value} does not exist (or is not a readable file or folder) on the "
            "trainer's machine; paths are read by the trainer (`magsrl train` resolves them "
            "against the config file)",
            param=param,
        )
    return resolved


def confine_model(value: str, roots: Sequence[Path]) -> str:
    """A run's ``model`` as the run will load it: ``tiny`` names and Hugging Face ids
    unchanged, a local folder resolved if it is a model folder under ``roots`` (the run
    loads whatever folder it names, so it is confined like a dataset)."""
    from magsrl.models.tiny import TINY_PREFIX, tiny_name
    from magsrl.zoom.families import FAMILIES

    if value in {TINY_PREFIX, *(tiny_name(family) for family in FAMILIES)}:
        return value  # the tiny model is built in the magsrl cache
    # models.tiny.resolve_model loads an existing path before trying the Hub.
    if HUB_ID.match(value) and not Path(value).exists():
        return value
    path = confine(
        os.path.expanduser(value),
        roots,
        "model",
        allow="set MAGSRL_WEIGHTS_ROOTS on the trainer to allow another folder, or give a "
        "Hugging Face id or tiny",
    )
    if not (path / MODEL_CONFIG).is_file():
        raise BadRequest(
            f"model {value} is not a model folder ({MODEL_CONFIG} and weights)", param="model"
        )
    return str(path)


def check_size(path: Path, max_bytes: int, param: str) -> None:
    """A 413 naming the limit for a file over ``max_bytes`` (folders: their loader bounds)."""
    if path.is_file() and (size := path.stat().st_size) > max_bytes:
        raise PayloadTooLarge(
            f"{param} is {size} bytes, over the trainer's limit of {max_bytes} "
            "(MAGSRL_MAX_DATASET_BYTES)",
            param=param,
        )


def run_folder(output_dir: str | None, runs_dir: Path, run_id: str) -> Path:
    """The run's folder: ``runs_dir/<output_dir or run_id>``, which must not hold a run yet."""
    if output_dir is None:
        return runs_dir / run_id
    if len(output_dir) > MAX_PATH_CHARS or not RUN_FOLDER.match(output_dir):
        raise BadRequest(
            "output_dir names a subfolder of the trainer's runs directory: 1-128 letters, "
            "digits, '_', '-' or '.', starting with a letter or digit (no '/', no '..'); "
            "leave it out to use the run id",
            param="output_dir",
        )
    folder = runs_dir / output_dir
    resolved = Path(os.path.realpath(folder))
    if not resolved.is_relative_to(Path(os.path.realpath(runs_dir))) or resolved.is_file():
        raise BadRequest(
            f"output_dir {output_dir!r} is not a folder under the runs directory",
            param="output_dir",
        )
    if resolved.is_dir() and any(resolved.iterdir()):
        raise Conflict(
            f"output_dir {output_dir!r} already holds a run; pick another name",
            param="output_dir",
        )
    return folder


def local_model_dir(spec: str) -> Path | None:
    """The folder a run's learner loads ``spec`` from: ``tiny``/``nano`` and local folders as
    ``resolve_model`` gives them, a Hugging Face id from the Hub cache (``HF_HOME``; compose
    mounts the engine's download read-only and offline, so the learner trains the very
    weights vLLM serves). None when it is in neither place."""
    from magsrl.models.hub import model_config_file
    from magsrl.models.tiny import resolve_model

    resolved = resolve_model(spec)
    if Path(resolved).is_dir():
        return Path(resolved)
    config = model_config_file(str(resolved))
    return config.parent if config is not None else None
