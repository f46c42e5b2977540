"""The nano training curve as a PNG: loss, and the held-out skills (box cell, crop reading,
no-zoom reading) against the step, with the stage boundaries marked."""

from __future__ import annotations

import csv
from pathlib import Path


def plot_curve(csv_path: Path, png_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Path(csv_path).open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(steps, loss, lw=0.7)
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    scored = [r for r in rows if r.get("cell")]
    labels = {
        "cell": "box cell right",
        "crop": "digit read from the true crop",
        "direct": "digit read without zoom",
    }
    for key, label in labels.items():
        ax2.plot(
            [int(r["step"]) for r in scored], [100 * float(r[key]) for r in scored], label=label
        )
    ax2.axhline(10, color="grey", ls=":", lw=0.8, label="chance (digit)")
    ax2.set_ylim(0, 100)
    ax2.set_xlabel("step")
    ax2.set_ylabel("held-out, teacher-forced (%)")
    ax2.legend(loc="lower right", fontsize=8)
    last = None
    for r in rows:
        if r["stage"] != last and last is not None:
            for ax in (ax1, ax2):
                ax.axvline(int(r["step"]), color="k", lw=0.5, alpha=0.4)
        last = r["stage"]
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
