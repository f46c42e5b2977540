"""A run's metrics: one JSONL line per step (the record resume truncates to), TensorBoard
scalars, and the PNG plots saved beside the final adapter.

Steps are counted from 1 (the row of the first step says ``"step": 1``), as everything
else a user sees counts them: the progress bar and ``RunInfo.step`` (steps done),
checkpoints (``step-8.pt`` after the 8th) and the config's ``steps: 8``. Rows and plots
used to count 0-7 while the bar counted 1-8."""

from __future__ import annotations

import json
import logging
import math
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

    def truncate(self, steps_done: int) -> None:
        """Keeps the rows of the first ``steps_done`` steps: a resumed run redoes the rest."""
        kept = [r for r in self.rows() if r["step"] <= steps_done]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def append(self, step: int, metrics: dict[str, float]) -> None:
        """``step``: the step just done, counted from 1."""
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
            if not any(name in r for r in rows):
                continue
            steps, values = series(rows, name)
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.plot(steps, values, marker="o", markersize=3)
            ax.set_xlabel("step")
            ax.set_ylabel(name)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = out_dir / f"{name}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            paths.append(path)
        return paths


def series(rows: list[dict[str, Any]], name: str) -> tuple[list[int], list[float]]:
    """Every step, and ``name``'s value at each, NaN where the step did not log it: a gap
    in the plot, not a line from its neighbours (a step with no gradient has no loss, and
    joining across it drew a loss it never had)."""
    return [int(r["step"]) for r in rows], [float(r.get(name, math.nan)) for r in rows]
