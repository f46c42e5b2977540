"""One-step-off training's bookkeeping (run config ``async_steps``): the steps whose jobs are
queued ahead of the learner, the adapter versions those jobs still need in the policy, and
which results are fresh enough to train on.

With ``async_steps = k`` the run loop queues the jobs of steps s+1..s+k, at the version that
is current then, before the learner step of s: the workers roll them out while the learner
trains. Step s+j is then learned at most j versions later, so its results lag at most k
versions; the learner corrects that lag with the importance weights it already applies
between learner and sampler (``grpo.py``, TIS against the worker's recorded log-probs), as
AReaL's decoupled PPO does (``rollout.max_head_offpolicyness``) and verl's one-step-off
recipe. A result outside ``[current - k, current]`` (a job left from before a trainer
restart, a stray worker) is dropped and its job queued again at the current version.
``k = 0`` is the synchronous loop: nothing is queued ahead, every result must be current.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from magsrl.proto.rollout import RolloutJob, RolloutResult
from magsrl.trainer.schedule import StepBatch

__all__ = ["Pipeline", "Queued", "is_fresh", "requeued_job"]

REQUEUE_MARK = "~r"  # job id of the n-th re-queue: <run>:<step>:<sample>:<g>~r<n>


@dataclass(frozen=True)
class Queued:
    """A step whose jobs were queued ahead: its batch (refills draw from its levels) and
    the jobs, already in the queue."""

    batch: StepBatch
    jobs: list[RolloutJob]


class Pipeline:
    """The steps queued ahead of the learner, by step; ``take`` hands a step's jobs to the
    loop when it collects them, after which they no longer hold their version loaded."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._ahead: dict[int, Queued] = {}

    def __contains__(self, step: int) -> bool:
        return step in self._ahead

    def put(self, step: int, batch: StepBatch, jobs: list[RolloutJob]) -> None:
        self._ahead[step] = Queued(batch, jobs)

    def take(self, step: int) -> Queued | None:
        return self._ahead.pop(step, None)

    def steps_ahead(self, step: int, last: int) -> range:
        """The steps to have queued before the learner step of ``step`` (``last``: the
        run's last step)."""
        return range(step + 1, min(step + self.depth, last) + 1)

    def versions(self) -> set[int]:
        """The versions the jobs queued ahead name: the policy must keep them loaded."""
        return {job.version for queued in self._ahead.values() for job in queued.jobs}


def lag(result: RolloutResult, version: int) -> int:
    """How many versions the policy that generated ``result`` is behind ``version``."""
    return version - result.version


def is_fresh(result: RolloutResult, version: int, max_lag: int) -> bool:
    """True when the learner at ``version`` may train on ``result``: generated at most
    ``max_lag`` versions ago, and never by a version newer than the learner's (a crashed
    trainer's lost branch, whose version number the resumed run reuses for other weights)."""
    return 0 <= lag(result, version) <= max_lag


def requeued_job(job: RolloutJob, version: int, policy_model: str | None) -> RolloutJob:
    """``job`` again at ``version``, under the next new id (``~r1``, ``~r2``...): the stale
    result holds the old id (first result wins, ``queue.complete``), so a re-queue under it
    would never be answered."""
    base, _, count = job.job_id.partition(REQUEUE_MARK)
    n = int(count) + 1 if count.isdigit() else 1
    return job.model_copy(
        update={
            "job_id": f"{base}{REQUEUE_MARK}{n}",
            "version": version,
            "policy_model": policy_model,
        }
    )


def releasable(loaded: Iterable[int], keep: set[int]) -> list[int]:
    """The loaded versions nobody needs: neither the newest nor one a queued job names."""
    return sorted(v for v in loaded if v not in keep)
