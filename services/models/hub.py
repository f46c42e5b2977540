"""Finding a model's ``config.json`` in the Hugging Face Hub cache without the network or
``huggingface_hub``: how the ``openai`` engine learns the family of a model vLLM loaded by
its Hub id (the cache volume is shared read-only).

The layout (https://huggingface.co/docs/hub/local-cache): ``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``; a model ``org/name`` lives in
``models--org--name/``, ``refs/main`` holds the commit, and ``snapshots/<commit>/`` the files.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_FILE = "config.json"


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def model_config_file(model: str, cache_dir: Path | None = None) -> Path | None:
    """The ``config.json`` of ``model``: a local folder's own, or the Hub cache's copy of
    the repo id (the ``main`` ref's snapshot, else any snapshot holding one); None if
    neither exists here."""
    local = Path(model).expanduser() / CONFIG_FILE
    if local.is_file():
        return local
    if "/" not in model or model.startswith(("/", ".")):
        return None
    repo = (cache_dir or hub_cache_dir()) / ("models--" + model.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        pinned = repo / "snapshots" / ref.read_text(encoding="utf-8").strip() / CONFIG_FILE
        if pinned.is_file():
            return pinned
    found = sorted((repo / "snapshots").glob(f"*/{CONFIG_FILE}"))
    return found[0] if found else None
