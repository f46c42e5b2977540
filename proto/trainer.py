"""Wire models of the trainer's run API (``/v1/runs``): shared by the trainer, ``magsrl
train`` and the eval harness. The run config itself is ``magsrl.trainer.run_config``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# paused: the run holds the training slot but waits for Redis, the policy or the magnifier
# to answer again (its status event says which and why); it then goes back to running.
RunStatus = Literal["queued", "running", "paused", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
# In the training slot when the trainer stopped: resumed first after a restart.
IN_SLOT: frozenset[str] = frozenset({"running", "paused"})


class RunCreated(BaseModel):
    run_id: str
    status: RunStatus
    position: int = Field(0, description="Runs ahead of this one in the queue.")


class Checkpoint(BaseModel):
    step: int
    path: str


class RunInfo(BaseModel):
    run_id: str
    name: str
    status: RunStatus
    step: int = Field(description="Optimizer steps done.")
    total: int = Field(description="Optimizer steps planned.")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    version: int = Field(0, description="The latest adapter version loaded into the policy.")
    policy_model: str | None = Field(None, description="Its name in the policy: <run>-v<n>.")
    metrics: dict[str, float] = Field(default_factory=dict, description="The latest step's.")
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    output_dir: str
    adapter: str | None = Field(None, description="The final adapter, once the run completed.")
    plots: list[str] = Field(default_factory=list)
    error: str | None = None
    reason: str | None = Field(
        None, description="While paused: which dependency is away and why (else null)."
    )
    warnings: list[str] = Field(default_factory=list)


class RunList(BaseModel):
    runs: list[RunInfo]


class RunEvent(BaseModel):
    """One SSE event: a finished step, a status change, or a warning."""

    type: Literal["step", "status", "warning"]
    run_id: str
    step: int
    total: int
    time: float
    status: RunStatus | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    message: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
