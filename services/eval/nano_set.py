"""The ``nano`` eval set: fresh held-out nano scenes drawn from the eval's seed (a split
no training run uses), written once as a JSONL dataset under ``OUT/nano``; and the nano
table's box figures (crop contains the target, box IoU) from an eval's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from magsrl.data import nano_scenes as ns
from magsrl.data.sample import Sample, write_jsonl

NANO = "nano"
EVAL_SPLIT = 500_000  # scene seeds of eval seed S: scene_seed(EVAL_SPLIT + S, i)
RL_SPLIT = 600_000  # `magsrl nano data`: the GRPO demo's scenes
DEFAULT_N = 100


def nano_set(out: Path, n: int, seed: int) -> Path:
    """``n`` held-out nano scenes of ``seed`` as ``out/nano/data.jsonl``."""
    return write_nano_set(Path(out) / NANO, n, seed, EVAL_SPLIT)


def write_nano_set(folder: Path, n: int, seed: int, split: int) -> Path:
    """``n`` nano scenes of ``split + seed`` as ``folder/data.jsonl``; rebuilt only when
    the count, seed or split differ (the same seed gives the same bytes)."""
    folder = Path(folder)
    data, stamp = folder / "data.jsonl", folder / "nano_set.json"
    wanted = json.dumps({"n": n, "seed": seed, "split": split}) + "\n"
    if data.exists() and stamp.exists() and stamp.read_text() == wanted:
        return data
    (folder / "images").mkdir(parents=True, exist_ok=True)

    def rows() -> Any:
        for i in range(n):
            scene = ns.make_nano_scene(ns.scene_seed(split + seed, i))
            rel = f"images/nano-{seed}-{i:05d}.png"
            scene.image.save(folder / rel, "PNG")
            yield Sample(
                id=f"nano-{seed}-{i:05d}",
                image=rel,
                question=ns.QUESTION,
                answer=scene.answer,
                bbox=[float(v) for v in scene.label_box],
                category=NANO,
                dataset=NANO,
                scorer="text",
                extra={"cell": list(scene.cell), "cell_box": list(scene.cell_box)},
            )

    write_jsonl(data, rows())
    stamp.write_text(wanted)
    return data


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def contains(box: list[float], target: list[float]) -> bool:
    return (
        box[0] <= target[0] and box[1] <= target[1] and box[2] >= target[2] and box[3] >= target[3]
    )


def box_figures(eval_dir: Path) -> dict[str, dict[str, float]]:
    """Per arm: the share of samples whose first zoom box contains the framed label's digit
    (the crop shows what answers), contains the whole label, and the mean IoU of that box
    with the label's cell (the box the scripted trajectories ask for) and with the label
    itself (at most (84/112)^2 = 0.56 for a cell box)."""
    eval_dir = Path(eval_dir)
    samples = {}
    for line in (eval_dir / NANO / "data.jsonl").read_text().splitlines():
        if line.strip():
            s = json.loads(line)
            samples[s["id"]] = s
    per_arm: dict[str, list[tuple[bool, bool, float, float]]] = {}
    for line in (eval_dir / "results.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        sample = samples.get(r["sample_id"])
        if sample is None:
            continue
        boxes = [
            z["box"] for rd in r.get("rounds", []) for z in rd.get("zooms", []) if z.get("box")
        ]
        label = sample["bbox"]
        cell = sample["extra"]["cell_box"]
        if boxes:
            box = boxes[0]
            per_arm.setdefault(r["arm"], []).append(
                (contains(box, label), iou(box, cell) > 0.99, iou(box, cell), iou(box, label))
            )
        else:
            per_arm.setdefault(r["arm"], []).append((False, False, 0.0, 0.0))
    return {
        arm: {
            "n": len(v),
            "crop_contains_label": sum(x[0] for x in v) / len(v),
            "box_is_cell": sum(x[1] for x in v) / len(v),
            "mean_iou_cell": sum(x[2] for x in v) / len(v),
            "mean_iou_label": sum(x[3] for x in v) / len(v),
        }
        for arm, v in per_arm.items()
    }
