"""A run's metrics: one JSONL line per step (the record resume truncates to), TensorBoard
scalars, and the PNG plots saved beside the final adapter."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("magsrl.trainer")

PLOTTED = (
    "reward_mean",
    "accuracy",
    "zoom_rate",
    "kl",
    "loss",
    # instruments of issue 14: policy, mismatch, optimisation, lengths, held-out accuracy
    "entropy",
    "grad_norm",
    "lr",
    "ratio_max",
    "is_ratio_max",
    "mismatch_kl",
    "corrected_frac",
    "completion_tokens",
    "truncation_rate",
    "accuracy_zoomed",
    "accuracy_direct",
    "val_accuracy_zoom",
    "val_accuracy_nozoom",
)


class MetricsLog:
    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.tb_dir = run_dir / "tensorboard"
        self.tensorboard = tensorboard
        self._writer: Any = None

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, before_step: int) -> None:
        """Keeps the rows of steps before ``before_step``: a resumed run redoes the rest."""
        kept = [r for r in self.rows() if r["step"] < before_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def append(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as fh:
            # The run's step last: the learner's own counter must not overwrite it.
            fh.write(json.dumps({**metrics, "step": step}) + "\n")
        if self.tensorboard:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.tb_dir))
            for name, value in metrics.items():
                self._writer.add_scalar(name, value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def plot(self, out_dir: Path) -> list[Path]:
        """One PNG per plotted metric against step; metrics never logged are skipped."""
        import matplotlib

        matplotlib.use("Agg")  # no display on servers
        import matplotlib.pyplot as plt

        rows = self.rows()
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in PLOTTED:
            points = [(r["step"], r[name]) for r in rows if name in r]
            if not points:
                continue
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
            ax.set_xlabel("step")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = out_dir / f"{name}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            paths.append(path)
        return paths
