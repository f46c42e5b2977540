"""One training run, step by step: draw the step's samples from the curriculum schedule,
enqueue G rollout jobs per sample at the current adapter version, wait for the workers'
results, drop stale ones, score failed ones (reward 0, counted), compute group advantages,
refill groups with no reward variance with new prompts (DAPO's dynamic sampling), take a
learner step, save and load the next adapter version into the policy, log, and checkpoint.
A step with nothing to learn from publishes no new version.

With ``async_steps = k > 0`` (one-step-off training, ``pipeline.py``) the jobs of the next k
steps are queued before each learner step, at the version current then, so rollout and
learning overlap; results up to k versions old are trained on (the learner's importance
weights correct the lag), older ones are re-queued, and a version stays loaded in the policy
until the last queued job that names it has been collected.

Steps always finish: a job the queue dead-letters becomes a failed result (the collector
watches the dead-letter stream, and allows one more ``rollout.job_timeout_s`` for a slow
worker's late result), so the step never waits out its timeout for it.

Differences from TRL's GRPOTrainer: generation happens in separate worker processes through
Redis (so rollouts scale out and survive a learner restart), every rollout is a multi-round
zoom episode whose tool/observation tokens are masked, and groups may shrink when a rollout
fails or comes back from the wrong version, so advantages are normalised per actual group.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from redis.exceptions import RedisError

from magsrl.clients.magnifier import MagnifierClient
from magsrl.clients.policy import PolicyClient, PolicyError, PolicyUnavailable
from magsrl.proto.rollout import RolloutJob, RolloutResult, failed_result
from magsrl.proto.sample import Sample
from magsrl.trainer.config import TrainerSettings
from magsrl.trainer.grpo import composed_advantages
from magsrl.trainer.limits import LimitsDisagree, RunLimits, agree, policy_limits
from magsrl.trainer.metrics_log import MetricsLog
from magsrl.trainer.pipeline import Pipeline, is_fresh, releasable, requeued_job
from magsrl.trainer.queue import QueueConfig, RolloutQueue
from magsrl.trainer.recovery import DependencyDown
from magsrl.trainer.registry import publish_run, retire_run
from magsrl.trainer.rewards import primary_reward
from magsrl.trainer.run_config import RunConfig
from magsrl.trainer.schedule import Schedule, StepBatch, load_run_samples
from magsrl.trainer.step_metrics import lag_metrics, rollout_metrics

log = logging.getLogger("magsrl.trainer")
CANCEL_POLL_S = 0.5
DEAD_LETTER_SCAN = 10_000  # dead letters read per poll: a run's whole dead-letter stream
MAX_REQUEUES = 2  # rounds of re-queueing a step's too-old results before its group shrinks
LOST_VERSION_CHECK_S = 5.0  # while waiting on jobs of an older version: is it still served?
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


@dataclass
class Grouped:
    """A step's results grouped for the learner: the results to train on and their
    advantages (N,), and the group counts behind them."""

    kept: list[RolloutResult]
    advantages: torch.Tensor
    varied: int  # groups with reward variance (they carry a gradient)
    dropped: int  # groups left out: no variance (when dropped), or fewer than 2 members


def advantages_by_group(
    results: list[RolloutResult],
    scale_by_std: bool,
    drop_zero_variance: bool,
    weights: dict[str, float] | None = None,
) -> Grouped:
    """Advantages within each sample's group of rollouts (groups may have shrunk by stale
    results). Failed rollouts are members with reward 0 (a failure is scored, not ignored)
    but carry no tokens, so they are not kept for the learner. With ``weights`` the group
    std comes from the primary reward (``grpo.composed_advantages``); without, from the
    total (plain GRPO)."""
    groups: dict[int, list[RolloutResult]] = {}
    for r in results:
        groups.setdefault(r.sample_index, []).append(r)
    kept: list[RolloutResult] = []
    advantages: list[torch.Tensor] = []
    dropped = varied = 0
    for members in groups.values():
        rewards = torch.tensor([_reward(m) for m in members], dtype=torch.float64)
        primary = rewards
        if weights is not None:
            primary = torch.tensor(
                [0.0 if m.error else primary_reward(m.components, weights) for m in members],
                dtype=torch.float64,
            )
        flat = bool((rewards == rewards[0]).all())
        varied += int(len(members) >= 2 and not flat)
        if len(members) < 2 or (drop_zero_variance and flat):
            dropped += 1
            continue
        adv = composed_advantages(rewards, primary, len(members), scale_by_std=scale_by_std)
        for member, a in zip(members, adv, strict=True):
            if member.error is None:
                kept.append(member)
                advantages.append(a.float())
    stacked = torch.stack(advantages) if advantages else torch.zeros(0)
    return Grouped(kept=kept, advantages=stacked, varied=varied, dropped=dropped)


def job_seed(seed: int, prefix: str, sample: int, member: int) -> int:
    """A rollout's sampling seed, stable across processes (``hash`` of a str is not: a
    resumed run must redraw the same episodes)."""
    digest = hashlib.sha256(f"{seed}:{prefix}:{sample}:{member}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31)


def _reward(result: RolloutResult) -> float:
    return 0.0 if result.error is not None else result.reward


def dead_result(job: RolloutJob, reason: str) -> RolloutResult:
    """The failed result of a job the queue dead-lettered: scored 0, counted as failed."""
    return failed_result(job, "queue", f"dead-lettered: {reason}", 0.0)


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
        self.policy = PolicyClient(
            settings.policy_url, api_key=api_key, timeout_s=settings.policy_timeout_s, client=http
        )
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
        self.limits = RunLimits(None, None, None, "settings")
        self.stale_total = 0
        self._image_ids: dict[str, str] = {}  # sample image path -> magnifier image id
        self._base_checked = False  # the first publish checks what the policy serves
        self.validation_samples: list[Sample] = []
        self.nonfinite_run = 0  # consecutive steps whose loss was NaN/inf
        self.pipeline = Pipeline(config.async_steps)
        self._loaded: set[int] = set()  # versions this process may have loaded in the policy
        self._lost_requeued = 0  # jobs re-queued because the policy lost their version

    # ---- policy adapters ------------------------------------------------------------------
    async def _policy(self, call: Awaitable[None], what: str) -> None:
        try:
            await call
        except PolicyUnavailable as exc:
            if exc.status in (0, 502, 503, 504):
                # Unreachable or not ready: the run pauses and resumes from its checkpoint
                # once the policy answers again (runs.py), instead of failing for good.
                raise DependencyDown(
                    f"the policy is unavailable for {what}: {exc.message}"
                ) from exc
            raise RunFailed(f"the policy failed {what} ({exc.status}): {exc.message}") from exc
        except PolicyError as exc:
            raise RunFailed(f"the policy refused {what} ({exc.status}): {exc.message}") from exc

    async def _publish_version(self, version: int) -> None:
        """Loads version ``version`` into the policy, under the lock the adapter watchdog
        shares, so a reload after a policy restart never lands between an unload and a load."""
        async with self.hooks.publishing:
            await self._swap_version(version)

    async def _swap_version(self, version: int) -> None:
        """First unloads a copy the policy may still hold from before a trainer restart: a
        resumed run retrains the steps after its last checkpoint, so a version the crashed
        process had published has other weights now (one DELETE per step, a 404 in the
        usual case)."""
        if not self.config.lora.enabled:
            await self._publish_weights(version)
            return
        if not self._base_checked:
            await self._restore_base_weights()
            self._base_checked = True
        name = adapter_name(self.run_id, version)
        policy = self.policy
        if name is not None:
            # already gone is fine (the usual case, and a restarted policy)
            await self._policy(policy.unload_adapter(name, missing_ok=True), f"unloading {name}")
            path = self.run_dir / "adapters" / f"v{version}"
            await self._policy(
                policy.load_adapter(name, str(path.resolve())), f"loading adapter {name}"
            )
        self._loaded.add(version)
        await self._release_versions(version)
        self.hooks.on_version(version, name)

    async def _release_versions(self, version: int) -> None:
        """Unloads the older versions no queued job names any more: synchronously that is
        every older one; with async_steps the version the jobs queued ahead name stays
        loaded until their step has collected them (the policy holds at most 8 adapters)."""
        if not self.config.lora.enabled:
            return  # full fine-tuning serves one version at a time (_publish_weights)
        for old in releasable(self._loaded, self.pipeline.versions() | {version}):
            name = adapter_name(self.run_id, old)
            if name is not None:
                await self._policy(
                    self.policy.unload_adapter(name, missing_ok=True), f"unloading {name}"
                )
            self._loaded.discard(old)

    async def _publish_weights(self, version: int) -> None:
        """Full fine-tuning: the policy swaps in version ``version``'s whole model and serves
        it as ``<run>-v<n>`` (version 0: the base model's own weights); older folders go. The
        first publish of a (resumed) run saves its version again from the checkpoint it
        loaded, since a crashed process may have left other weights under that name."""
        from magsrl.trainer.weights_sync import prune_versions, version_folder

        name = adapter_name(self.run_id, version)
        if name is None:
            await self._policy(self.policy.reset_weights(), "restoring the base weights")
        else:
            folder = version_folder(self.run_dir, version)
            if not self._base_checked:
                await asyncio.to_thread(self.learner.save_adapter, folder)
            await self._policy(
                self.policy.load_weights(str(folder.resolve()), name), f"loading weights {name}"
            )
        self._base_checked = True
        prune_versions(self.run_dir, keep=version)
        self.hooks.on_version(version, name)

    async def _restore_base_weights(self) -> None:
        """LoRA adapts the base model: a policy still serving a full fine-tuning run's
        weights goes back to its own first (a policy without /v1/weights never changed)."""
        try:
            status = await self.policy.weights()
        except PolicyError:
            return  # cannot tell: the adapter load that follows reports a real problem
        if status is not None and status.path is not None:
            await self._policy(self.policy.reset_weights(), "restoring the base weights")

    # ---- setup ----------------------------------------------------------------------------
    async def _setup(self) -> tuple[Schedule, int, int]:
        from magsrl.models.hub import hub_cache_dir
        from magsrl.trainer.learner_group import make_learner
        from magsrl.trainer.paths import local_model_dir

        samples = load_run_samples(self.config)
        samples, self.validation_samples = self._split_validation(samples)
        schedule = Schedule(self.config, samples)
        model_dir = await asyncio.to_thread(local_model_dir, self.config.model)
        if model_dir is None:
            raise RunFailed(
                f"model {self.config.model!r} is neither a local folder nor in the Hugging Face "
                f"cache ({hub_cache_dir()}); download it there first (`hf download "
                f"{self.config.model}`, or let the engine download it into the shared HF_HOME)"
            )
        # One source for the limits shared with the engine: the policy's (trainer/limits.py).
        try:
            reported = await policy_limits(self.policy)
            self.limits = agree(self.settings, reported)
        except LimitsDisagree as exc:
            raise RunFailed(str(exc)) from exc
        self.learner = await asyncio.to_thread(
            make_learner,  # in-process, or a torchrun group with learner.nproc_per_node > 1
            Path(model_dir),
            self.config,
            self.settings.device,
            min_pixels=self.limits.min_pixels,
            max_pixels=self.limits.max_pixels,
            work_dir=self.run_dir / "learner",
            image_store_dir=self.settings.image_store_path(),
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

    def _split_validation(self, samples: list[Any]) -> tuple[list[Any], list[Sample]]:
        """The training samples and the held-out validation ones: the validation file when
        one is named, else the dataset's last ``max_samples`` (then never trained on)."""
        val = self.config.validation
        if not val.every:
            return samples, []
        if val.dataset is not None:
            from magsrl.data.loaders import load_dataset

            return samples, list(load_dataset(Path(val.dataset), val.dataset_kind))[
                : val.max_samples
            ]
        if len(samples) <= val.max_samples:
            raise RunFailed(
                f"validation.max_samples={val.max_samples} would hold out all {len(samples)} "
                "samples: lower it, or name a validation.dataset"
            )
        held = samples[-val.max_samples :]
        plain = [
            Sample.model_validate(s.model_dump(include=set(Sample.model_fields))) for s in held
        ]
        return samples[: -val.max_samples], plain

    # ---- one step -------------------------------------------------------------------------
    async def _make_jobs(
        self,
        batch: StepBatch,
        samples: list[Sample],
        step: int,
        version: int,
        *,
        first_index: int,
        group_size: int | None = None,
        tag: str | None = None,
        zoom: str | None = None,
        temperature: float | None = None,
    ) -> list[RolloutJob]:
        grpo = self.config.grpo
        low, high = self.learner.processor.pixel_bounds()
        prefix = f"{self.run_id}:{step}" if tag is None else f"{self.run_id}:{tag}"
        jobs = []
        for i, sample in enumerate(samples, first_index):
            image_id = self._image_ids.get(sample.image)
            if image_id is None:
                info = await self.magnifier.upload(Path(sample.image).read_bytes())
                image_id = self._image_ids[sample.image] = info.image_id
            for g in range(grpo.group_size if group_size is None else group_size):
                options = self.config.job_options(
                    zoom or batch.zoom,  # type: ignore[arg-type]
                    seed=job_seed(self.config.seed, prefix, i, g),
                )
                if temperature is not None:
                    options = options.model_copy(update={"temperature": temperature})
                jobs.append(
                    RolloutJob(
                        **options.model_dump(),
                        job_id=f"{prefix}:{i}:{g}",
                        run_id=self.run_id,
                        step=step,
                        sample_index=i,
                        group_index=g,
                        version=version,
                        policy_model=adapter_name(self.run_id, version),
                        sample=sample,
                        image_id=image_id,
                        question_suffix=batch.question_suffix,
                        frame_min_pixels=low,
                        frame_max_pixels=high,
                        max_images=self.limits.max_images,
                        eos_token_id=self.learner.eos_id,
                        rewards=self.config.job_weights(),
                        target_token=self.config.rewards.target_token,
                        reward_options=self.config.rewards.options(),
                    )
                )
        return jobs

    async def _enqueue(self, queue: RolloutQueue, jobs: list[RolloutJob]) -> None:
        for job in jobs:
            await queue.enqueue(job.job_id, job)  # False: a result exists (a resumed step)

    async def _collect(
        self, queue: RolloutQueue, jobs: list[RolloutJob], *, enqueued: bool = False
    ) -> list[RolloutResult]:
        """Every job's result (``enqueued``: the jobs were queued ahead already). A job the
        queue dead-letters (K deliveries, or malformed) becomes a failed result once it has
        been in the dead-letter stream for one more ``rollout.job_timeout_s`` without a
        result: a worker that was slow rather than dead (the janitor reclaimed its job)
        still gets to complete it."""
        if not enqueued:
            await self._enqueue(queue, jobs)
        by_id = {job.job_id: job for job in jobs}
        ids = list(by_id)
        found: dict[str, RolloutResult] = {}
        dead_since: dict[str, tuple[float, str]] = {}  # job id -> (first seen, reason)
        grace = self.config.rollout.job_timeout_s
        deadline = time.monotonic() + self.settings.step_timeout_s
        check_lost = time.monotonic() + LOST_VERSION_CHECK_S
        while True:
            if self.hooks.cancelled.is_set():
                raise asyncio.CancelledError
            missing = [i for i in ids if i not in found]
            got = await queue.wait_results(missing, timeout_s=CANCEL_POLL_S)
            for job_id, raw in got.results.items():
                found[job_id] = RolloutResult.model_validate(raw)
            if got.missing:
                waiting = set(got.missing)
                now = time.monotonic()
                for dead in await queue.dead_letters(count=DEAD_LETTER_SCAN):
                    if dead.job_id in waiting:
                        dead_since.setdefault(dead.job_id, (now, dead.reason))
                for job_id, (since, reason) in dead_since.items():
                    if job_id in waiting and now - since >= grace:
                        found[job_id] = dead_result(by_id[job_id], reason)
                if self.config.async_steps and now >= check_lost:
                    check_lost = now + LOST_VERSION_CHECK_S
                    waiting_jobs = [by_id[i] for i in got.missing if i not in found]
                    for old, new in await self._replace_lost(queue, waiting_jobs):
                        ids[ids.index(old.job_id)] = new.job_id
                        by_id[new.job_id] = new
                        jobs.append(new)  # the caller drops its result with the step's
            if len(found) == len(ids):
                break
            if time.monotonic() > deadline:
                stats = await queue.stats()
                raise RunFailed(
                    f"{len(ids) - len(found)} of {len(ids)} rollouts did not finish within "
                    f"{self.settings.step_timeout_s:.0f}s (queue: {stats}). Are rollout "
                    "workers running? Start them with `magsrl serve rollout-worker` or "
                    "`magsrl up` (it runs two by default)."
                )
        return [found[i] for i in ids]

    async def _replace_lost(
        self, queue: RolloutQueue, waiting: list[RolloutJob]
    ) -> list[tuple[RolloutJob, RolloutJob]]:
        """async_steps: a policy that restarted has lost its adapters; the run manager
        loads the newest back, and a worker drops a job whose older version is then gone
        (``worker.superseded``). Waiting jobs whose version the policy no longer serves are
        queued again at the newest version; returns (old, new) pairs."""
        newest = max(self._loaded, default=0)
        older = [j for j in waiting if j.policy_model is not None and j.version < newest]
        if not older:
            return []
        try:
            served = {m.id for m in await self.policy.models()}
        except PolicyError:
            return []  # away or starting: look again at the next check
        name = adapter_name(self.run_id, newest)
        pairs = [(j, requeued_job(j, newest, name)) for j in older if j.policy_model not in served]
        if pairs:
            log.warning(
                "run %s: the policy lost %s; %d jobs queued again at %s",
                self.run_id,
                ", ".join(sorted({old.policy_model or "" for old, _ in pairs})),
                len(pairs),
                name,
            )
            await self._enqueue(queue, [new for _, new in pairs])
            self._lost_requeued += len(pairs)
        return pairs

    def _refill_samples(
        self, schedule: Schedule, batch: StepBatch, used: set[str], count: int, attempt: int
    ) -> list[Sample]:
        """``count`` new prompts for a refill, deterministic from (seed, step, attempt): the
        step's levels when it asked for some, samples not yet in the step first."""
        levels = schedule.levels_by_id()
        pool = [
            s for s in schedule.samples if not batch.levels or levels.get(s.id) in batch.levels
        ] or schedule.samples
        fresh = [s for s in pool if s.id not in used] or pool
        rng = random.Random(f"{self.config.seed}:refill:{batch.step}:{attempt}")
        if len(fresh) >= count:
            return rng.sample(fresh, count)
        return [rng.choice(fresh) for _ in range(count)]

    def _fresh(self, results: list[RolloutResult], version: int) -> list[RolloutResult]:
        """The results the learner at ``version`` may train on (``pipeline.is_fresh``)."""
        return [r for r in results if is_fresh(r, version, self.config.async_steps)]

    async def _requeue_stale(
        self,
        queue: RolloutQueue,
        jobs: list[RolloutJob],
        results: list[RolloutResult],
        version: int,
    ) -> tuple[list[RolloutResult], int]:
        """async_steps > 0: the jobs whose results lag more than async_steps versions are
        queued again at ``version`` (appended to ``jobs``), so their groups keep their size;
        returns the results with the fresh ones in their place, and how many were re-queued.
        Synchronous runs keep dropping stale results (their group shrinks)."""
        if not self.config.async_steps:
            return results, 0
        requeued = 0
        for _ in range(MAX_REQUEUES):
            stale = {r.job_id for r in results if not is_fresh(r, version, self.config.async_steps)}
            if not stale:
                break
            by_id = {job.job_id: job for job in jobs}
            name = adapter_name(self.run_id, version)
            again = [requeued_job(by_id[i], version, name) for i in sorted(stale)]
            jobs += again
            requeued += len(again)
            kept = [r for r in results if r.job_id not in stale]
            results = kept + await self._collect(queue, again)
        return results, requeued

    async def _queue_ahead(
        self, queue: RolloutQueue, schedule: Schedule, step: int, version: int
    ) -> None:
        """async_steps = k: the jobs of steps step+1..step+k, at ``version``, go into the
        queue before the learner step of ``step``, so workers roll them out while it trains.
        A step that re-scores the curriculum first is drawn in its turn (after the re-score),
        and so are the steps after it."""
        for ahead in self.pipeline.steps_ahead(step, self.config.steps - 1):
            if schedule.needs_rescore(ahead):
                break
            if ahead in self.pipeline:
                continue
            batch = schedule.batch(ahead)
            jobs = await self._make_jobs(batch, batch.samples, ahead, version, first_index=0)
            await self._enqueue(queue, jobs)
            self.pipeline.put(ahead, batch, jobs)

    async def _step(
        self, queue: RolloutQueue, schedule: Schedule, step: int, version: int
    ) -> dict[str, float]:
        started = time.perf_counter()
        grpo = self.config.grpo
        self._lost_requeued = 0
        # Taken out of the pipeline now, its jobs' version is not unloaded all the same:
        # nothing is released until this step's learner step has published.
        queued = self.pipeline.take(step)
        if queued is None:
            batch = schedule.batch(step)
            jobs = await self._make_jobs(batch, batch.samples, step, version, first_index=0)
            results = await self._collect(queue, jobs)
        else:  # queued ahead before an earlier learner step (async_steps)
            batch, jobs = queued.batch, list(queued.jobs)
            results = await self._collect(queue, jobs, enqueued=True)
        results, requeued = await self._requeue_stale(queue, jobs, results, version)
        weights = self.config.job_weights()
        used = {s.id for s in batch.samples}
        refilled = 0
        for attempt in range(grpo.max_refills):
            current = self._fresh(results, version)
            grouped = advantages_by_group(current, grpo.scale_rewards == "group", True, weights)
            missing = grpo.prompts_per_step - grouped.varied
            if missing <= 0:
                break
            # DAPO's dynamic sampling: new prompts for the groups that teach nothing.
            extra = self._refill_samples(schedule, batch, used, missing, attempt)
            used |= {s.id for s in extra}
            first = max(j.sample_index for j in jobs) + 1
            more = await self._make_jobs(batch, extra, step, version, first_index=first)
            jobs += more
            got, again = await self._requeue_stale(
                queue, jobs, await self._collect(queue, more), version
            )
            results += got
            requeued += again
            refilled += len(extra)
        rollout_s = time.perf_counter() - started
        requeued += self._lost_requeued
        current = self._fresh(results, version)
        stale_dropped = requeued - self._lost_requeued + len(results) - len(current)
        failed = [r for r in current if r.error is not None]
        self.stale_total += stale_dropped
        if failed:
            self.hooks.on_warning(step, f"{len(failed)} rollouts failed: {failed[0].error}")
        grouped = advantages_by_group(
            current, grpo.scale_rewards == "group", grpo.drop_zero_variance, weights
        )
        kept, advantages = grouped.kept, grouped.advantages
        truncated_masked = 0
        if grpo.overlong == "mask" and kept:
            # DAPO's overlong filtering: cut episodes shape their group's baseline but get no
            # loss of their own.
            keep = [i for i, r in enumerate(kept) if not r.truncated]
            truncated_masked = len(kept) - len(keep)
            kept, advantages = [kept[i] for i in keep], advantages[keep]
        metrics = rollout_metrics(current)
        metrics.update(lag_metrics(current, version))
        metrics.update(
            stale_dropped=float(stale_dropped),
            stale_total=float(self.stale_total),
            requeued=float(requeued),
            failed=float(len(failed)),
            groups=float(len({r.sample_index for r in current})),
            groups_varied=float(grouped.varied),
            groups_dropped=float(grouped.dropped),
            refilled_prompts=float(refilled),
            overlong_masked=float(truncated_masked),
            rollout_s=rollout_s,  # the wait for this step's results (shorter when queued ahead)
        )
        # One-step-off: the next steps' jobs go out before this learner step, at this version.
        await self._queue_ahead(queue, schedule, step, version)
        # A step where every advantage is 0 has no gradient: no update, no new version.
        learnable = bool(kept) and bool(advantages.abs().sum() > 0)
        metrics["updated"] = float(learnable)
        learn_started = time.perf_counter()
        if learnable:
            learn = await asyncio.to_thread(self.learner.step, kept, advantages)
            # The learner counts the updates it made; the run counts steps (groups may all
            # be dropped, and a step then makes no update).
            learn["optimizer_steps"] = learn.pop("step", 0.0)
            metrics.update({k: float(v) for k, v in learn.items()})
            diff = metrics.get("logprob_diff", 0.0)
            # Results of an older version differ from the learner by the policy's own change
            # too, which the importance weights correct: only a lag-free step tests engines.
            if diff > self.settings.logprob_warn and not metrics.get("lag_max"):
                self.hooks.on_warning(
                    step,
                    f"learner and sampler log-probs differ by {diff:.2e} on average (over "
                    f"{self.settings.logprob_warn:g}): the learner is not scoring what was "
                    "sampled; check that the policy serves the run's model with the same "
                    "image bounds",
                )
        else:
            self.hooks.on_warning(step, "no group had reward variance: no update this step")
        metrics["learn_s"] = time.perf_counter() - learn_started
        metrics["step_s"] = time.perf_counter() - started
        await queue.drop_results([j.job_id for j in jobs])
        return metrics

    async def _validate(self, queue: RolloutQueue, step: int, version: int) -> dict[str, float]:
        """The held-out set, once with zoom and once without, at the current version."""
        val = self.config.validation
        batch = StepBatch(
            step=step,
            samples=[],
            stage_index=0,
            zoom="auto",
            question_suffix=None,
            levels=(),
            sample_levels=(),
            level_weights=None,
            fallback=False,
        )
        out: dict[str, float] = {}
        for arm, zoom in (("zoom", "auto"), ("nozoom", "off")):
            jobs = await self._make_jobs(
                batch,
                self.validation_samples,
                step,
                version,
                first_index=0,
                group_size=1,
                tag=f"val{step}-{arm}",
                zoom=zoom,
                temperature=val.temperature,
            )
            results = [r for r in await self._collect(queue, jobs) if r.error is None]
            await queue.drop_results([j.job_id for j in jobs])
            if results:
                out[f"val_accuracy_{arm}"] = sum(r.correct for r in results) / len(results)
                if arm == "zoom":
                    out["val_zoom_rate"] = sum(r.zooms > 0 for r in results) / len(results)
        return out

    # ---- the run --------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        """Trains to the last step; returns the final adapter and plot paths."""
        try:
            return await self._run()
        finally:  # a distributed learner's ranks end with the run
            await asyncio.to_thread(getattr(self.learner, "close", lambda: None))

    async def _run(self) -> dict[str, Any]:
        schedule, start, version = await self._setup()
        async with RolloutQueue.from_url(self.settings.redis_url, self.queue_config) as queue:
            await queue.ensure_group()
            await publish_run(queue._client, self.queue_config)
            try:
                # Versions a crashed trainer may have left loaded: released at the first
                # publish (a resumed run's queued jobs name its own versions again).
                first = max(1, version - 1 - self.config.async_steps)
                self._loaded = set(range(first, version))
                await self._publish_version(version)
                for step in range(start, self.config.steps):
                    if self.hooks.cancelled.is_set():
                        raise asyncio.CancelledError
                    if schedule.needs_rescore(step):
                        await self._rescore(schedule, step, version)
                    metrics = await self._step(queue, schedule, step, version)
                    published = time.perf_counter()
                    if self._nonfinite(step, metrics):
                        pass  # no update was made: the policy keeps serving this version
                    elif metrics["updated"]:
                        version += 1
                        await asyncio.to_thread(
                            self.learner.save_adapter, self.run_dir / "adapters" / f"v{version}"
                        )
                        await self._publish_version(version)
                    async with self.hooks.publishing:  # the step's jobs are done with theirs
                        await self._release_versions(version)
                    metrics["publish_s"] = time.perf_counter() - published
                    every = self.config.validation.every
                    if every and self.validation_samples and (step + 1) % every == 0:
                        metrics.update(await self._validate(queue, step, version))
                    metrics["version"] = float(version)
                    self.metrics.append(step + 1, metrics)  # steps done, as on_step counts
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
        from magsrl.clients.judge import JudgeClient, JudgeError, JudgeUnavailable
        from magsrl.data.judging import judge_samples

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
        source = self.run_dir / "adapters" / f"v{version}"
        if not source.exists():  # no step ever updated (version 0): the initial adapter
            self.learner.save_adapter(source)
        shutil.copytree(source, adapter)
        plots = self.metrics.plot(final)
        return {"adapter": str(adapter), "plots": [str(p) for p in plots], "version": version}
