"""Where the committed, trained nano model lives (``nano_weights/`` beside this module), so
``--model nano`` resolves with no import of the recipe that made it (``magsrl.nano``, which
sits above the data layer its scenes come from)."""

from __future__ import annotations

from pathlib import Path

NANO_NAME = "nano"
WEIGHTS_DIR = Path(__file__).with_name("nano_weights")
RECIPE_FILE = "magsrl_nano.json"


def nano_model_dir() -> Path:
    """The committed, trained nano model."""
    if not (WEIGHTS_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"no trained nano model at {WEIGHTS_DIR}; build one with `magsrl nano train`"
        )
    return WEIGHTS_DIR
