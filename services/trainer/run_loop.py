"""One training run, step by step: draw the step's samples from the curriculum schedule,
enqueue G rollout jobs per sample at the current adapter version, wait for the workers'
results, drop stale and failed ones, compute group advantages, take a learner step, save
and load the next adapter version into the policy, log, and checkpoint.

Differences from TRL's GRPOTrainer: generation happens in separate worker processes through
Redis (so rollouts scale out and survive a learner restart), every rollout is a multi-round
zoom episode whose tool/observation tokens are masked, and groups may shrink when a rollout
fails or comes back from the wrong version, so advantages are normalised per actual group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from redis.exceptions import RedisError

from magsrl.clients.magnifier import MagnifierClient
from magsrl.common.remote import remote_error
from magsrl.proto.rollout import RolloutJob, RolloutResult
from magsrl.trainer.config import TrainerSettings
from magsrl.trainer.grpo import group_advantages
from magsrl.trainer.metrics_log import MetricsLog
from magsrl.trainer.queue import QueueConfig, RolloutQueue
from magsrl.trainer.recovery import DependencyDown
from magsrl.trainer.registry import publish_run, retire_run
from magsrl.trainer.run_config import RunConfig
from magsrl.trainer.schedule import Schedule, load_run_samples

log = logging.getLogger("magsrl.trainer")
CANCEL_POLL_S = 0.5
CHECKPOINT_GLOB = "step-*.pt"


class RunFailed(Exception):
    """The run cannot go on; the message says why and what to do."""


@dataclass
class Hooks:
    """How the loop reports to its run record (runs.py): all optional callables."""

    on_step: Callable[[int, dict[str, float]], None]
    on_warning: Callable[[int, str], None]
    on_version: Callable[[int, str | None], None]
    on_checkpoint: Callable[[int, str], None]
    cancelled: asyncio.Event
    # Held while adapters are swapped in the policy, so no one else (runs.py reloading an
    # adapter a restarted policy lost) sees the gap between an unload and a load.
    publishing: asyncio.Lock = field(default_factory=asyncio.Lock)


def adapter_name(run_id: str, version: int) -> str | None:
    return None if version == 0 else f"{run_id}-v{version}"


def checkpoint_step(path: Path) -> int:
    return int(path.stem.removeprefix("step-"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob(CHECKPOINT_GLOB), key=checkpoint_step)
    return found[-1] if found else None


def advantages_by_group(
    results: list[RolloutResult], scale_by_std: bool, drop_zero_variance: bool
) -> tuple[list[RolloutResult], torch.Tensor, int]:
    """Advantages within each sample's group of rollouts (groups may have shrunk); returns
    the kept results, their advantages (N,), and how many groups were dropped."""
    groups: dict[int, list[RolloutResult]] = {}
    for r in results:
        groups.setdefault(r.sample_index, []).append(r)
    kept: list[RolloutResult] = []
    advantages: list[torch.Tensor] = []
    dropped = 0
    for members in groups.values():
        rewards = torch.tensor([m.reward for m in members], dtype=torch.float32)
        if len(members) < 2 or (drop_zero_variance and bool((rewards == rewards[0]).all())):
            dropped += 1
            continue
        kept.extend(members)
        advantages.append(group_advantages(rewards, len(members), scale_by_std=scale_by_std))
    return kept, (torch.cat(advantages) if advantages else torch.zeros(0)), dropped


class RunLoop:
    def __init__(
        self,
        run_id: str,
        config: RunConfig,
        run_dir: Path,
        settings: TrainerSettings,
        hooks: Hooks,
        http: httpx.AsyncClient,
    ) -> None:
        self.run_id = run_id
        self.config = config
        self.run_dir = run_dir
        self.settings = settings
        self.hooks = hooks
        self.http = http
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.magnifier = MagnifierClient(settings.magnifier_url, api_key=api_key)
        self.metrics = MetricsLog(run_dir, settings.tensorboard)
        self.queue_config = QueueConfig(
            run_id=run_id,
            max_deliveries=config.rollout.max_deliveries,
            claim_idle_ms=int(config.rollout.job_timeout_s * 1000),
            maxlen=config.rollout.queue_maxlen,
            max_lag=config.rollout.max_lag,
        )
        self.learner: Any = None
        self.stale_total = 0
        self.nonfinite_run = 0  # consecutive steps whose loss was NaN/inf

    # ---- policy adapters ------------------------------------------------------------------
    async def _policy(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        url = f"{self.settings.policy_url}{path}"
        try:
            resp = await self.http.request(
                method, url, json=body, headers=self.headers, timeout=self.settings.policy_timeout_s
            )
        except httpx.HTTPError as exc:
            raise DependencyDown(
                f"the policy at {self.settings.policy_url} is unreachable: {exc}"
            ) from exc
        if resp.status_code == 503:
            raise DependencyDown(f"the policy is not ready: {remote_error(resp)[0]}")
        if resp.status_code >= 400:
            message, _ = remote_error(resp)
            if method == "DELETE" and resp.status_code == 404:
                return  # already gone (a restarted policy)
            raise RunFailed(f"the policy refused {method} {path} ({resp.status_code}): {message}")

    async def _publish_version(self, version: int) -> None:
        """Loads version ``version`` into the policy, first unloading a copy the policy may
        still hold from before a trainer restart (same name, same files)."""
        async with self.hooks.publishing:
            await self._swap_version(version)

    async def _swap_version(self, version: int) -> None:
        name = adapter_name(self.run_id, version)
        if name is not None:
            # Always: a trainer killed after publishing a step but before checkpointing it
            # redoes the step, and the policy still holds that version's name.
            await self._policy("DELETE", f"/v1/adapters/{name}")
        if name is not None:
            path = self.run_dir / "adapters" / f"v{version}"
            await self._policy("POST", "/v1/adapters", {"name": name, "path": str(path.resolve())})
        # Jobs of the previous step are all done: no one needs the older version.
        older = adapter_name(self.run_id, version - 1) if version > 1 else None
        if older is not None:
            await self._policy("DELETE", f"/v1/adapters/{older}")
        self.hooks.on_version(version, name)

    # ---- setup ----------------------------------------------------------------------------
    async def _setup(self) -> tuple[Schedule, int, int]:
        from magsrl.models.tiny import resolve_model
        from magsrl.trainer.learner import Learner

        samples = load_run_samples(self.config)
        schedule = Schedule(self.config, samples)
        model_dir = await asyncio.to_thread(resolve_model, self.config.model)
        if not Path(model_dir).is_dir():
            raise RunFailed(
                f"model {self.config.model!r} is not a local folder; download it first "
                "(huggingface-cli download) or use tiny"
            )
        self.learner = await asyncio.to_thread(
            Learner,
            Path(model_dir),
            self.config,
            self.settings.device,
            min_pixels=self.settings.min_image_pixels,
            max_pixels=self.settings.max_image_pixels_model,
        )
        start, version = 0, 0
        checkpoint = latest_checkpoint(self.run_dir)
        if checkpoint is not None:
            extra = await asyncio.to_thread(self.learner.load_checkpoint, checkpoint)
            start, version = int(extra["step"]), int(extra["version"])
            if extra.get("scores"):
                schedule.restore_levels(extra["scores"])
            log.info("run %s resumes at step %d (version %d)", self.run_id, start, version)
        self.metrics.truncate(start)
        return schedule, start, version

    # ---- one step -------------------------------------------------------------------------
    async def _jobs(self, schedule: Schedule, step: int, version: int) -> list[RolloutJob]:
        batch = schedule.batch(step)
        grpo = self.config.grpo
        low, high = self.learner.processor.pixel_bounds()
        jobs = []
        for i, sample in enumerate(batch.samples):
            info = await self.magnifier.upload(Path(sample.image).read_bytes())
            for g in range(grpo.group_size):
                jobs.append(
                    RolloutJob(
                        job_id=f"{self.run_id}:{step}:{i}:{g}",
                        run_id=self.run_id,
                        step=step,
                        sample_index=i,
                        group_index=g,
                        version=version,
                        policy_model=adapter_name(self.run_id, version),
                        sample=sample,
                        image_id=info.image_id,
                        zoom=batch.zoom,
                        question_suffix=batch.question_suffix,
                        upscale=self.config.rollout.upscale,
                        max_rounds=grpo.max_rounds,
                        max_tokens=grpo.max_new_tokens,
                        temperature=grpo.temperature,
                        top_p=grpo.top_p,
                        seed=hash((self.config.seed, step, i, g)) % (2**31),
                        protocol=self.config.zoom_protocol,
                        frame_min_pixels=low,
                        frame_max_pixels=high,
                        eos_token_id=self.learner.eos_id,
                        rewards=self.config.rewards.weights(),
                        target_token=self.config.rewards.target_token,
                    )
                )
        return jobs

    async def _collect(self, queue: RolloutQueue, jobs: list[RolloutJob]) -> list[RolloutResult]:
        for job in jobs:
            await queue.enqueue(job.job_id, job)  # False: a result exists (a resumed step)
        ids = [job.job_id for job in jobs]
        deadline = time.monotonic() + self.settings.step_timeout_s
        while True:
            if self.hooks.cancelled.is_set():
                raise asyncio.CancelledError
            got = await queue.wait_results(ids, timeout_s=CANCEL_POLL_S)
            if not got.missing:
                break
            if time.monotonic() > deadline:
                stats = await queue.stats()
                raise RunFailed(
                    f"{len(got.missing)} of {len(ids)} rollouts did not finish within "
                    f"{self.settings.step_timeout_s:.0f}s (queue: {stats}). Are rollout "
                    "workers running? Start them with `magsrl serve rollout-worker` or "
                    "`magsrl up --train`."
                )
        return [RolloutResult.model_validate(got.results[i]) for i in ids]

    def _rollout_metrics(self, results: list[RolloutResult]) -> dict[str, float]:
        ok = [r for r in results if r.error is None]
        if not ok:
            return {}
        return {
            "reward_mean": statistics.fmean(r.reward for r in ok),
            "reward_std": statistics.pstdev([r.reward for r in ok]),
            "accuracy": statistics.fmean(float(r.correct) for r in ok),
            "zoom_rate": statistics.fmean(float(r.zooms > 0) for r in ok),
            "zoom_errors": statistics.fmean(float(r.zoom_errors) for r in ok),
            "format": statistics.fmean(r.components.get("format", 0.0) for r in ok),
            "completion_tokens": statistics.fmean(float(r.completion_tokens) for r in ok),
            "rounds": statistics.fmean(float(r.rounds) for r in ok),
        }

    async def _step(
        self, queue: RolloutQueue, schedule: Schedule, step: int, version: int
    ) -> dict[str, float]:
        started = time.perf_counter()
        jobs = await self._jobs(schedule, step, version)
        results = await self._collect(queue, jobs)
        rollout_s = time.perf_counter() - started
        stale = [r for r in results if r.version != version]
        failed = [r for r in results if r.version == version and r.error is not None]
        usable = [r for r in results if r.version == version and r.error is None]
        self.stale_total += len(stale)
        if failed:
            self.hooks.on_warning(step, f"{len(failed)} rollouts failed: {failed[0].error}")
        grpo = self.config.grpo
        kept, advantages, dropped = advantages_by_group(
            usable, grpo.scale_rewards == "group", grpo.drop_zero_variance
        )
        metrics = self._rollout_metrics(usable)
        metrics.update(
            stale_dropped=float(len(stale)),
            stale_total=float(self.stale_total),
            failed=float(len(failed)),
            groups_dropped=float(dropped),
            rollout_s=rollout_s,
        )
        if kept:
            learn = await asyncio.to_thread(self.learner.step, kept, advantages)
            # The learner counts the updates it made; the run counts steps (groups may all
            # be dropped, and a step then makes no update).
            learn["optimizer_steps"] = learn.pop("step", 0.0)
            metrics.update({k: float(v) for k, v in learn.items()})
            diff = metrics.get("logprob_diff", 0.0)
            if diff > self.settings.logprob_warn:
                self.hooks.on_warning(
                    step,
                    f"learner and sampler log-probs differ by {diff:.2e} on average (over "
                    f"{self.settings.logprob_warn:g}): the learner is not scoring what was "
                    "sampled; check that the policy serves the run's model with the same "
                    "image bounds",
                )
        metrics["step_s"] = time.perf_counter() - started
        await queue.drop_results([j.job_id for j in jobs])
        return metrics

    # ---- the run --------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        """Trains to the last step; returns the final adapter and plot paths."""
        schedule, start, version = await self._setup()
        async with RolloutQueue.from_url(self.settings.redis_url, self.queue_config) as queue:
            await queue.ensure_group()
            await publish_run(queue._client, self.queue_config)
            try:
                await self._publish_version(version)
                for step in range(start, self.config.steps):
                    if self.hooks.cancelled.is_set():
                        raise asyncio.CancelledError
                    if schedule.needs_rescore(step):
                        await self._rescore(schedule, step, version)
                    metrics = await self._step(queue, schedule, step, version)
                    if self._nonfinite(step, metrics):
                        pass  # no update was made: the policy keeps serving this version
                    else:
                        version += 1
                        await asyncio.to_thread(
                            self.learner.save_adapter, self.run_dir / "adapters" / f"v{version}"
                        )
                        await self._publish_version(version)
                    self.metrics.append(step, metrics)
                    self.hooks.on_step(step + 1, metrics)
                    if (step + 1) % self.settings.checkpoint_every == 0 or (
                        step + 1 == self.config.steps
                    ):
                        await self._checkpoint(schedule, step + 1, version)
            finally:
                with contextlib.suppress(RedisError):  # Redis away: the run pauses (runs.py)
                    await retire_run(queue._client, self.run_id)
                self.metrics.close()
                await self.magnifier.close()
            await queue.purge()
        return self._finish(version)

    def _nonfinite(self, step: int, metrics: dict[str, float]) -> bool:
        """True when the step's loss was NaN/inf (the learner skipped the update); fails
        the run after ``max_nonfinite_steps`` such steps in a row."""
        if not metrics.get("nonfinite"):
            self.nonfinite_run = 0
            return False
        self.nonfinite_run += 1
        limit = self.settings.max_nonfinite_steps
        if self.nonfinite_run >= limit:
            raise RunFailed(
                f"the loss was not finite for {limit} steps in a row (MAGSRL_MAX_NONFINITE_STEPS)"
                ": lower grpo.learning_rate or lora.alpha, or check the rewards"
            )
        self.hooks.on_warning(
            step,
            f"step {step}: the loss or gradient norm was not finite; the update was skipped "
            "and no adapter published",
        )
        return True

    async def _checkpoint(self, schedule: Schedule, step: int, version: int) -> None:
        folder = self.run_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{step}.pt"
        extra = {"step": step, "version": version, "scores": schedule.levels_by_id()}
        await asyncio.to_thread(self.learner.save_checkpoint, path, extra)
        for old in sorted(folder.glob(CHECKPOINT_GLOB), key=checkpoint_step)[
            : -self.settings.keep_checkpoints
        ]:
            old.unlink(missing_ok=True)
        self.hooks.on_checkpoint(step, str(path))

    async def _rescore(self, schedule: Schedule, step: int, version: int) -> None:
        from magsrl.data.judging import judge_samples
        from magsrl.judge.client import JudgeClient, JudgeError, JudgeUnavailable

        api_key = self.settings.api_key.get_secret_value() if self.settings.api_key else None
        try:
            async with JudgeClient(self.settings.judge_url, api_key=api_key) as judge:
                judged = await judge_samples(
                    schedule.samples,
                    judge,
                    self.config.curriculum.judge_method,
                    cache=False,
                    policy_model=adapter_name(self.run_id, version),
                )
        except (JudgeError, JudgeUnavailable) as exc:
            self.hooks.on_warning(step, f"re-scoring skipped: {exc}")
            return
        schedule.update_scores(judged.entries)
        self.hooks.on_warning(step, f"re-scored {len(judged.entries)} samples with pass_rate")

    def _finish(self, version: int) -> dict[str, Any]:
        final = self.run_dir / "final"
        adapter = final / "adapter"
        if adapter.exists():
            shutil.rmtree(adapter)
        shutil.copytree(self.run_dir / "adapters" / f"v{version}", adapter)
        plots = self.metrics.plot(final)
        return {"adapter": str(adapter), "plots": [str(p) for p in plots], "version": version}
