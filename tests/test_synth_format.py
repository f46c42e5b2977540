"""`magsrl data synth` size and format (issue 17): `--n 200` silently wrote 504 MB of PNG.
Now the CLI writes JPEG where the answer survives it and says how much it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from magsrl.cli import main
from magsrl.data.synth import SynthConfig, generate, image_format


def test_auto_format_keeps_text_lossless() -> None:
    """Pins: only PNG by default; text scenes must stay PNG (glyphs of a few pixels)."""
    cfg = SynthConfig(width=512, height=384, image_format="auto")
    assert image_format(cfg, "colour") == "jpeg"
    assert image_format(cfg, "count") == "jpeg"
    assert image_format(cfg, "text") == "png"
    assert image_format(SynthConfig(image_format="png"), "colour") == "png"


def test_synth_cli_says_the_size_and_prefers_jpeg(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pins: the CLI wrote every scene as PNG and never said how much it wrote."""
    out = tmp_path / "set"
    argv = ["data", "synth", "--n", "4", "--out", str(out), "--width", "256", "--height", "192"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    said = capsys.readouterr().err
    assert "MB" in said and "JPG" in said and "PNG" in said
    suffixes = sorted(p.suffix for p in (out / "images").iterdir())
    assert suffixes == [".jpg", ".jpg", ".jpg", ".png"]  # colour, count, text, position


def test_auto_writes_the_paths_the_jsonl_names(tmp_path: Path) -> None:
    """Pins: a sample's image path naming a suffix its file does not have."""
    path = generate(4, tmp_path, SynthConfig(width=256, height=192, image_format="auto"))
    for line in path.read_text().splitlines():
        assert (tmp_path / json.loads(line)["image"]).is_file()
