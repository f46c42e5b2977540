"""The trainer's end of a distributed learner: a torchrun group of ``learner_rank`` processes,
started once per run and kept, driven through request/response files in the run's
``learner/`` folder. It has the ``Learner`` interface the run loop uses (``processor``,
``eos_id``, ``step_count``, ``step``, ``save_adapter``, ``save_checkpoint``,
``load_checkpoint``), so the loop does not know which one it has (``make_learner``).

Why a kept group rather than torchrun per step: a start costs about 15 s here (2 ranks, the
tiny model: process start and imports), plus loading the model on every rank, plus, for full
fine-tuning, writing and reading the whole fp32 optimizer state each step (about 133 GB for
7B). A kept group pays the start once (docs/decisions.md).

With ``learner.nnodes > 1`` this process starts node-rank 0 (global ranks 0..N-1, rank 0 the
one that reads the requests); every other node runs the command ``node_command`` prints, with
the same model folder and a run folder all nodes see (checkpoints are read on every rank).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from magsrl.common.files import atomic_write_text
from magsrl.models.loading import load_processor
from magsrl.proto.rollout import RolloutResult
from magsrl.trainer.learner import Learner, OldLogps
from magsrl.trainer.learner_rank import (
    DEVICE_ENV,
    DRIVER_PID_ENV,
    POLL_S,
    request_path,
    response_path,
)
from magsrl.trainer.run_config import LearnerSettings, RunConfig
from magsrl.zoom.families import END_OF_TURN

STOP_WAIT_S = 30.0
LOG_TAIL = 4000


class LearnerGroupFailed(RuntimeError):
    """The rank group refused a request or ended; the message carries the reason."""


def torchrun_command(settings: LearnerSettings, work_dir: Path, node_rank: int = 0) -> list[str]:
    """The torchrun command line of one node (this one: node rank 0)."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    cmd += ["--nproc-per-node", str(settings.nproc_per_node)]
    if settings.nnodes == 1:
        cmd += ["--standalone"]
    else:
        assert settings.rendezvous_endpoint is not None  # LearnerSettings checked it
        host, port = settings.rendezvous_endpoint.rsplit(":", 1)
        # Static rendezvous: node rank 0 holds global rank 0, the rank the trainer talks to.
        cmd += ["--nnodes", str(settings.nnodes), "--node-rank", str(node_rank)]
        cmd += ["--master-addr", host, "--master-port", port]
    return [*cmd, "-m", "magsrl.trainer.learner_rank", str(work_dir)]


class LearnerGroup:
    """A started rank group (see the module docstring). ``close`` stops it."""

    def __init__(
        self,
        model_dir: Path,
        config: RunConfig,
        device: str = "auto",
        dtype: torch.dtype | str = "auto",
        *,
        work_dir: Path,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        old_logps: OldLogps = "learner",
        start_timeout_s: float = 1800.0,
        image_store_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.processor = load_processor(Path(model_dir), min_pixels, max_pixels)
        self.eos_id = int(self.processor.tokenizer.convert_tokens_to_ids(END_OF_TURN))
        self.step_count = 0
        self.work_dir = Path(work_dir)
        # A fresh group numbers its requests from 0: old files would be taken as answers.
        for sub in ("requests", "responses"):
            shutil.rmtree(self.work_dir / sub, ignore_errors=True)
            (self.work_dir / sub).mkdir(parents=True)
        init = {
            "model_dir": str(Path(model_dir).resolve()),
            "config": config.model_dump(mode="json"),
            "dtype": dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch."),
            "min_pixels": min_pixels,
            "max_pixels": max_pixels,
            "old_logps": old_logps,
            "image_store_dir": str(image_store_dir) if image_store_dir is not None else None,
        }
        atomic_write_text(self.work_dir / "init.json", json.dumps(init))
        self.log_path = self.work_dir / "ranks.log"
        env = {**os.environ, DRIVER_PID_ENV: str(os.getpid()), DEVICE_ENV: device}
        with open(self.log_path, "ab") as log:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                torchrun_command(config.learner, self.work_dir),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: close() ends all ranks
            )
        atexit.register(self.close)
        self._seq = 0
        try:
            self.world_size = int(self._wait(0, start_timeout_s)["world_size"])
        except BaseException:
            self.close()
            raise

    # ---- the Learner interface --------------------------------------------------------------
    def step(self, results: Sequence[RolloutResult], advantages: Tensor) -> dict[str, float]:
        if len(results) != advantages.shape[0]:
            raise ValueError(f"{len(results)} results but {advantages.shape[0]} advantages")
        if not results:
            raise ValueError("a step needs at least one rollout result")
        metrics = self._call(
            "step",
            results=[r.model_dump(mode="json") for r in results],
            advantages=advantages.detach().float().tolist(),
        )
        self.step_count = int(metrics["step"])
        return {k: float(v) for k, v in metrics.items()}

    def save_adapter(self, path: Path) -> Path:
        return Path(self._call("save_adapter", path=str(Path(path).resolve())))

    def save_checkpoint(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        self._call("save_checkpoint", path=str(Path(path).resolve()), extra=extra or {})

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        answer = self._call("load_checkpoint", path=str(Path(path).resolve()))
        self.step_count = int(answer["step_count"])
        return dict(answer["extra"])

    # ---- requests ---------------------------------------------------------------------------
    def _call(self, op: str, **args: Any) -> Any:
        if self.proc is None:
            raise LearnerGroupFailed("the learner group is closed")
        self._seq += 1
        atomic_write_text(request_path(self.work_dir, self._seq), json.dumps({"op": op, **args}))
        return self._wait(self._seq, None)

    def _wait(self, seq: int, timeout_s: float | None) -> Any:
        """Rank 0's answer to request ``seq``; raises when the group refused it or ended."""
        path = response_path(self.work_dir, seq)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not path.exists():
            if self.proc is None or self.proc.poll() is not None:
                raise LearnerGroupFailed(
                    f"the learner ranks ended (exit {self.proc and self.proc.returncode}); "
                    f"{self.log_path}:\n{self._log_tail()}"
                )
            if deadline is not None and time.monotonic() > deadline:
                raise LearnerGroupFailed(
                    f"the learner ranks did not start in {timeout_s:g} s; {self.log_path}:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(POLL_S)
        reply = json.loads(path.read_text())
        path.unlink()
        request_path(self.work_dir, seq).unlink(missing_ok=True)
        if not reply["ok"]:
            raise LearnerGroupFailed(f"the learner ranks refused: {reply['error']}")
        return reply["result"]

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Stops the ranks: a stop request, then SIGTERM to their process group."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        atexit.unregister(self.close)
        if proc.poll() is None:
            self._seq += 1
            stop = json.dumps({"op": "stop"})
            atomic_write_text(request_path(self.work_dir, self._seq), stop)
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=STOP_WAIT_S)
            request_path(self.work_dir, self._seq).unlink(missing_ok=True)
            response_path(self.work_dir, self._seq).unlink(missing_ok=True)


def make_learner(
    model_dir: Path,
    config: RunConfig,
    device: str = "auto",
    *,
    work_dir: Path,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    image_store_dir: Path | None = None,
) -> Learner | LearnerGroup:
    """The in-process ``Learner`` for ``learner`` 1 x 1 (as before), else a rank group."""
    pixels = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    if config.learner.world_size == 1:
        return Learner(model_dir, config, device, **pixels, image_store_dir=image_store_dir)
    return LearnerGroup(
        model_dir, config, device, work_dir=work_dir, **pixels, image_store_dir=image_store_dir
    )
