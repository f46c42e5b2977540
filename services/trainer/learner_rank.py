"""One rank of the distributed learner, as torchrun starts it::

    python -m torch.distributed.run --standalone --nproc-per-node 8 \\
        -m magsrl.trainer.learner_rank RUN_DIR/learner

Rank 0 reads the trainer's requests from the work folder (``init.json``, then
``requests/<n>.json``), broadcasts each to every rank (so ranks on other nodes need no shared
folder for them), all ranks carry it out together (``DistributedLearner``), and rank 0 writes
``responses/<n>.json``. ``magsrl.trainer.learner_group`` is the other end.

While no request comes, rank 0 broadcasts an idle beat every ``HEARTBEAT_S``: a collective
left waiting longer than the process group's timeout (NCCL's watchdog, gloo's 30 min) would
end the group during a long rollout phase. Rank 0 stops the group when the trainer process
that started it is gone (``MAGSRL_LEARNER_DRIVER_PID``), so no ranks outlive their trainer.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

HEARTBEAT_S = 30.0
POLL_S = 0.02
DRIVER_PID_ENV = "MAGSRL_LEARNER_DRIVER_PID"
DEVICE_ENV = "MAGSRL_LEARNER_DEVICE"


def request_path(work: Path, seq: int) -> Path:
    return work / "requests" / f"{seq:06d}.json"


def response_path(work: Path, seq: int) -> Path:
    return work / "responses" / f"{seq:06d}.json"


def _driver_alive() -> bool:
    pid = os.environ.get(DRIVER_PID_ENV)
    if not pid:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _next_request(work: Path, seq: int) -> dict[str, Any]:
    """Rank 0: the next request, an idle beat after HEARTBEAT_S, or stop if the trainer died."""
    deadline = time.monotonic() + HEARTBEAT_S
    path = request_path(work, seq)
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if not _driver_alive():
            return {"op": "stop"}
        time.sleep(POLL_S)
    return {"op": "idle"}


def _broadcast(value: Any) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _respond(work: Path, seq: int, reply: dict[str, Any]) -> None:
    from magsrl.common.files import atomic_write_text

    atomic_write_text(response_path(work, seq), json.dumps(reply))


def handle(learner: Any, request: dict[str, Any]) -> Any:
    """Carries out one request on every rank; returns rank 0's answer (plain JSON values)."""
    from magsrl.proto.rollout import RolloutResult

    op = request["op"]
    if op == "step":
        results = [RolloutResult.model_validate(r) for r in request["results"]]
        advantages = torch.tensor(request["advantages"], dtype=torch.float32)
        return learner.step(results, advantages)
    if op == "save_adapter":
        return str(learner.save_adapter(Path(request["path"])))
    if op == "save_checkpoint":
        learner.save_checkpoint(Path(request["path"]), request.get("extra"))
        return None
    if op == "load_checkpoint":
        extra = learner.load_checkpoint(Path(request["path"]))
        return {"extra": extra, "step_count": learner.step_count}
    raise ValueError(f"unknown learner request {op!r}")


def main(argv: list[str] | None = None) -> int:
    from magsrl.trainer.distributed import DistributedLearner, init_process_group
    from magsrl.trainer.run_config import RunConfig

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m magsrl.trainer.learner_rank WORK_DIR", file=sys.stderr)
        return 2
    work = Path(args[0])
    device = init_process_group(os.environ.get(DEVICE_ENV, "auto"))
    rank = dist.get_rank()
    try:
        init = _broadcast(json.loads((work / "init.json").read_text()) if rank == 0 else None)
        learner = DistributedLearner(
            Path(init["model_dir"]),
            RunConfig.model_validate(init["config"]),
            device.type,
            init["dtype"],
            min_pixels=init["min_pixels"],
            max_pixels=init["max_pixels"],
            old_logps=init["old_logps"],
            image_store_dir=Path(d) if (d := init.get("image_store_dir")) else None,
        )
    except Exception as exc:
        if rank == 0:
            _respond(work, 0, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        raise
    if rank == 0:
        _respond(work, 0, {"ok": True, "result": {"world_size": dist.get_world_size()}})
    seq = 1
    while True:
        request = _broadcast(_next_request(work, seq) if rank == 0 else None)
        if request["op"] == "idle":
            continue
        if request["op"] == "stop":
            break
        try:
            result = handle(learner, request)
        except Exception as exc:
            # Every rank raises alike (the same request, the same checks), or the group is
            # broken anyway: rank 0 tells the trainer why, then the group ends.
            if rank == 0:
                _respond(work, seq, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
            traceback.print_exc()
            raise
        if rank == 0:
            _respond(work, seq, {"ok": True, "result": result})
        seq += 1
    if rank == 0:
        _respond(work, seq, {"ok": True, "result": None})
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
