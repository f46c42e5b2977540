"""The nano eval set and its box figures: fresh held-out scenes from the seed, and the
crop-contains-target / IoU numbers docs/nano.md's table is built from."""

from __future__ import annotations

import json
from pathlib import Path

from magsrl.data import nano_scenes as ns
from magsrl.eval.nano_set import EVAL_SPLIT, box_figures, nano_set


def test_nano_set_is_seeded_and_held_out(tmp_path: Path) -> None:
    """Pins an eval set that changes between runs of one seed, or that reuses the training
    split's scenes (its accuracy would then measure memorisation)."""
    a = nano_set(tmp_path / "a", 5, seed=1).read_text()
    b = nano_set(tmp_path / "b", 5, seed=1).read_text()
    c = nano_set(tmp_path / "c", 5, seed=2).read_text()
    assert a.replace("/a/", "/b/") == b
    assert a != c
    first = json.loads(a.splitlines()[0])
    scene = ns.make_nano_scene(ns.scene_seed(EVAL_SPLIT + 1, 0))
    assert first["answer"] == scene.answer
    assert first["bbox"] == [float(v) for v in scene.label_box]
    from magsrl.nano.train import HELD_OUT_SPLIT, TRAIN_SPLIT

    assert EVAL_SPLIT not in {TRAIN_SPLIT, TRAIN_SPLIT + 100, TRAIN_SPLIT + 200, HELD_OUT_SPLIT}


def test_box_figures_score_the_first_zoom_against_the_label(tmp_path: Path) -> None:
    """Pins the table's localisation columns: a cell box contains the label (IoU 1 with the
    cell), a wrong cell does not, and no zoom counts as a miss."""
    nano_set(tmp_path, 3, seed=0)
    rows = [
        json.loads(line) for line in (tmp_path / "nano" / "data.jsonl").read_text().splitlines()
    ]
    cell0 = rows[0]["extra"]["cell_box"]
    wrong = [(v + ns.CELL) % ns.SIDE for v in rows[1]["extra"]["cell_box"]]
    wrong = [wrong[0], wrong[1], wrong[0] + ns.CELL, wrong[1] + ns.CELL]
    results = [
        {"sample_id": rows[0]["id"], "arm": "zoom-sr", "rounds": [{"zooms": [{"box": cell0}]}]},
        {"sample_id": rows[1]["id"], "arm": "zoom-sr", "rounds": [{"zooms": [{"box": wrong}]}]},
        {"sample_id": rows[2]["id"], "arm": "zoom-sr", "rounds": [{"zooms": []}]},
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    figures = box_figures(tmp_path)["zoom-sr"]
    assert figures["n"] == 3
    assert abs(figures["crop_contains_label"] - 1 / 3) < 1e-9
    assert abs(figures["box_is_cell"] - 1 / 3) < 1e-9
    assert abs(figures["mean_iou_label"] - (84 / 112) ** 2 / 3) < 1e-6
