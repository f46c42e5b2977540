"""The rollout worker: takes jobs from the active runs' Redis streams, runs the same zoom
loop as ``/answer`` against the policy (at the job's exact adapter version) and the
magnifier, records every segment's token ids, scores the rewards, and writes the result.

Any number of workers run on any number of machines; the queue's consumer group gives each
job to one of them, and its janitor hands a dead worker's jobs to another.
Run: ``magsrl serve rollout-worker``
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from pathlib import Path

import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.exceptions import RedisError

from magsrl.clients.magnifier import MagnifierClient, MagnifierError, MagnifierUnavailable
from magsrl.clients.policy import PolicyClient, PolicyError
from magsrl.common.errors import ServiceUnavailable
from magsrl.common.image_blobs import open_image_store, store_dir
from magsrl.common.images import decode_reduced
from magsrl.engines.openai_upstream import OpenAIEngine
from magsrl.engines.settings import EngineSettings
from magsrl.proto.episode import ServedOptions
from magsrl.proto.policy import PolicyInfo
from magsrl.proto.rollout import RolloutJob, RolloutResult, result_identity
from magsrl.proto.rollout import failed_result as failed
from magsrl.trainer.config import WorkerSettings
from magsrl.trainer.episode_stats import episode_stats
from magsrl.trainer.limits import job_disagreement
from magsrl.trainer.queue import Delivery, QueueError, RolloutConsumer
from magsrl.trainer.registry import active_runs
from magsrl.trainer.rewards import compute_reward
from magsrl.trainer.trajectory import (
    ImageWriter,
    encode_images,
    images_from_messages,
    retokenize_mismatch,
    segments_from_rounds,
)
from magsrl.zoom.engine import UnknownModel
from magsrl.zoom.loop import LoopOptions, ZoomLoop

log = logging.getLogger("magsrl.worker")
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
DEPENDENCY_RETRY_S = 0.5  # first wait before a job whose dependency was down is retried


class DependencyDown(Exception):
    """The policy or magnifier is unreachable: the job stays un-acked and is retried."""


class RemotePolicy(OpenAIEngine):
    """The policy service seen as an upstream engine: the zoom loop's generate calls become
    ``/v1/chat/completions`` with ``return_token_ids`` and log-probs. Its family comes from
    the policy's own model card (read from the model's config.json there), never from a
    name. The model list is fetched again only when a job names a version not seen yet (a
    just-loaded adapter)."""

    def set_frame(self, min_pixels: int | None, max_pixels: int | None) -> None:
        self.settings = self.settings.model_copy(
            update={"min_image_pixels": min_pixels, "max_image_pixels_model": max_pixels}
        )

    async def know(self, model: str | None) -> None:
        if self.known_family() is not None and (model is None or model in self.model_names()):
            return
        problem = await self.ready()
        if problem:
            raise DependencyDown(f"policy: {problem}")


def remote_policy(
    info: PolicyInfo, policy_url: str, api_key: SecretStr | None, timeout_s: float
) -> RemotePolicy:
    """An engine over the policy that ``info`` describes (its base model and family)."""
    return RemotePolicy(
        EngineSettings(
            policy_model=info.model,
            family=info.family,
            upstream_url=f"{policy_url.rstrip('/')}/v1",
            upstream_api_key=api_key,
            upstream_timeout_s=timeout_s,
        )
    )


# A dependency is down: the job is retried, not reported as a failed rollout.
DEPENDENCY_ERRORS = (
    DependencyDown,
    MagnifierUnavailable,
    ServiceUnavailable,
    UnknownModel,
    QueueError,
    OSError,
)


async def run_job(
    job: RolloutJob,
    policy: RemotePolicy,
    magnifier: MagnifierClient,
    worker: str,
    served: ServedOptions | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    images: ImageWriter | None = None,
) -> RolloutResult:
    """One rollout, start to finish, as ``/answer`` runs it: the same image decode (EXIF
    orientation, the model's view), the job's options over what the policy serves
    (``served``), the same loop. Failures become a result with ``error`` set (and no
    tokens), so the learner sees the job finished rather than waiting for it forever.

    The conversation's images go to the shared store through ``images`` and the result
    carries their references; without a store they travel inline (base64 PNGs)."""
    started = time.perf_counter()
    data = await magnifier.get_image(job.image_id) or await reupload(job, magnifier)
    policy.set_frame(job.frame_min_pixels, job.frame_max_pixels)
    # Decoded straight to the model's view, as /answer does: a 12 MP photo travels to the
    # policy and back to the learner at the engine's pixel budget, not at full size.
    await policy.know(job.policy_model)
    image, original = decode_reduced(
        data, max_pixels=max_image_pixels, target=policy.frame_size, param="image"
    )
    opts = LoopOptions.from_episode(
        job.episode_options(),
        served or ServedOptions(),
        model=job.policy_model,
        question_suffix=job.question_suffix,
        max_images=job.max_images,
        logprobs=True,
    )
    loop = ZoomLoop(policy, magnifier)
    outcome = await loop.run(
        image,
        data,
        job.image_id,
        job.sample.question,
        job.sample.options,
        opts,
        original_size=original,
    )
    completions = [r.completions[0] for r in outcome.results]
    reward = compute_reward(
        job.sample,
        outcome.rounds,
        outcome.answer,
        [c.text for c in completions],
        job.rewards,
        protocol=outcome.protocol,  # the registry name (auto resolved)
        target_token=job.target_token,
        completion_tokens=[c.tokens or [] for c in completions] if job.target_token else None,
        zoom_mode=job.zoom,
        options=job.reward_options,
        image_size=image.size,
        zooms_over_limit=outcome.zooms_over_limit,
        truncated=any(c.finish_reason == "length" for c in completions),
    )
    segments = segments_from_rounds(outcome.results, job.eos_token_id)
    zooms = [z for r in outcome.rounds for z in r.zooms]
    seen = images_from_messages(outcome.messages)
    if images is None:
        pixels: dict[str, object] = {"images": await asyncio.to_thread(encode_images, seen)}
    else:
        # The original, as decoded for this frame, is the same pixels in every job of the
        # group: the writer encodes and stores it once per worker.
        keys = [(job.image_id, image.size, image.mode) if im is image else None for im in seen]
        pixels = {"image_refs": await asyncio.to_thread(images.refs, seen, keys)}
    return RolloutResult(
        **result_identity(job, worker),  # type: ignore[arg-type]
        segments=segments,
        **pixels,  # type: ignore[arg-type]
        reward=reward.total,
        components=reward.components,
        answer=outcome.answer,
        correct=reward.correct,
        zooms=sum(1 for z in zooms if z.error is None and z.box is not None),
        zoom_errors=outcome.zoom_errors,
        rounds=len(outcome.rounds),
        completion_tokens=sum(len(c.token_ids) for c in completions),
        retokenize_mismatch=retokenize_mismatch(outcome.results, job.eos_token_id),
        elapsed_ms=(time.perf_counter() - started) * 1000,
        **episode_stats(outcome, image.size),
    )


async def reupload(job: RolloutJob, magnifier: MagnifierClient) -> bytes:
    """The job's image, uploaded again from the sample's file: a restarted magnifier has
    lost its cache. A worker that cannot read the file leaves the job for a retry."""
    path = Path(job.sample.image)
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise DependencyDown(
            f"image {job.image_id} is no longer in the magnifier and {path} is not readable "
            "here; the job is retried"
        ) from exc
    info = await magnifier.upload(data)
    if info.image_id != job.image_id:
        raise MagnifierError(409, f"{path} changed since the trainer uploaded it")
    return data


def superseded(job: RolloutJob, served: list[str]) -> bool:
    """True when the policy serves a newer version of the job's run than the job's."""
    prefix = f"{job.run_id}-v"
    versions = [n.removeprefix(prefix) for n in served if n.startswith(prefix)]
    return any(v.isdigit() and int(v) > job.version for v in versions)


def failed_result(job: RolloutJob, worker: str, error: str, started: float) -> RolloutResult:
    """``proto.rollout.failed_result`` timed from ``started`` (perf_counter)."""
    return failed(job, worker, error, (time.perf_counter() - started) * 1000)


class RolloutWorker:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        policy_client: PolicyClient | None = None,
        magnifier: MagnifierClient | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        self.policy_client = policy_client or PolicyClient(
            settings.policy_url, api_key=api_key, timeout_s=settings.policy_timeout_s
        )
        self.policy: RemotePolicy | None = None  # once the policy said what it serves
        self.served = ServedOptions()
        self.magnifier = magnifier or MagnifierClient(
            settings.magnifier_url, api_key=api_key, timeout_s=settings.magnifier_timeout_s
        )
        self.redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.consumers: dict[str, RolloutConsumer] = {}
        self.slots = asyncio.Semaphore(settings.worker_concurrency)
        store = open_image_store(store_dir(settings.image_store_dir, settings.runs_dir))
        self.images = ImageWriter(store) if store is not None else None
        if store is None:
            log.warning(
                "no image store (MAGSRL_IMAGE_STORE_DIR or MAGSRL_RUNS_DIR): results carry "
                "their images inline, megabytes each through Redis"
            )
        self.done = 0
        self.stopping = asyncio.Event()

    async def connect(self) -> None:
        """Asks the policy what it serves: its base model, its family (from the model's
        config.json), and the crop and protocol settings jobs leave unset. Raises
        ``DependencyDown`` while the policy is unreachable or still loading."""
        try:
            info = await self.policy_client.info()
        except PolicyError as exc:
            raise DependencyDown(f"policy: {exc}") from exc
        if info.family is None:
            raise DependencyDown(f"policy: {info.model} is still loading")
        if self.policy is not None:
            await self.policy.close()
        self.policy = remote_policy(
            info, self.settings.policy_url, self.settings.api_key, self.settings.policy_timeout_s
        )
        self.served = info.served
        log.info(
            "policy serves %s (%s), protocol %s, crops %s px in %s",
            info.model,
            info.family,
            info.served.protocol,
            info.served.crop_max_pixels,
            info.served.crop_in,
        )

    async def _consumers(self) -> list[RolloutConsumer]:
        configs = {c.run_id: c for c in await active_runs(self.redis)}
        for run_id in list(self.consumers):
            if run_id not in configs:
                with contextlib.suppress(QueueError):
                    await self.consumers.pop(run_id).aclose()
        for run_id, config in configs.items():
            if run_id not in self.consumers:
                consumer = RolloutConsumer.from_url(self.settings.redis_url, config, name=self.name)
                await consumer.ensure_group()
                self.consumers[run_id] = consumer
        return list(self.consumers.values())

    async def _process(self, consumer: RolloutConsumer, delivery: Delivery) -> None:
        started = time.perf_counter()
        try:
            job = RolloutJob.model_validate(delivery.payload)
        except ValueError as exc:
            log.error("dropping a malformed job %s: %s", delivery.job_id, exc)
            await consumer.ack(delivery)
            return
        # A live worker's job is never presumed lost, however slow the rollout: only a dead
        # worker's goes idle for job_timeout_s and is reclaimed (no rollout runs twice).
        heartbeat = asyncio.create_task(self._heartbeat(consumer, delivery))
        try:
            result = await self._run_holding(consumer, delivery, job, started)
        finally:
            heartbeat.cancel()
        if result is None:
            return
        try:
            first = await consumer.complete(delivery, result)
        except QueueError as exc:  # Redis away: the job stays pending and is redone
            log.warning("job %s: result not stored, will be redone: %s", job.job_id, exc)
            return
        self.done += 1
        log.info(
            "job %s done in %.0f ms (reward %.3f)%s",
            job.job_id,
            result.elapsed_ms,
            result.reward,
            "" if first else " (duplicate; first result kept)",
        )

    async def _superseded(self, job: RolloutJob) -> bool:
        await self.policy.ready()  # the model list, fresh: the cached one predates the 404
        return superseded(job, self.policy.model_names())

    async def _heartbeat(self, consumer: RolloutConsumer, delivery: Delivery) -> None:
        while True:
            await asyncio.sleep(consumer.config.claim_idle_ms / 3000)
            try:
                if not await consumer.touch(delivery):
                    return  # done, or reclaimed by another worker
            except QueueError:
                pass  # Redis away: try again next beat

    async def _run_holding(
        self, consumer: RolloutConsumer, delivery: Delivery, job: RolloutJob, started: float
    ) -> RolloutResult | None:
        """The job's result; while a dependency is down, the job is retried here with
        backoff and kept fresh in the queue (``touch``), so an outage does not use up its
        deliveries and dead-letter it. None: left un-acked for a later delivery."""
        problem = job_disagreement(self.settings, job)
        if problem is not None:  # the worker was started for another engine: no retry helps
            return failed_result(job, self.name, f"ValueError: {problem}", started)
        delay = DEPENDENCY_RETRY_S
        deadline = time.monotonic() + self.settings.dependency_wait_s
        while True:
            try:
                assert self.policy is not None  # run() connects before taking jobs
                return await run_job(
                    job,
                    self.policy,
                    self.magnifier,
                    self.name,
                    self.served,
                    self.settings.max_image_pixels,
                    self.images,
                )
            except DEPENDENCY_ERRORS as exc:
                if isinstance(exc, UnknownModel) and await self._superseded(job):
                    # A leftover of a finished step (a resumed step enqueued it again): its
                    # version is gone for good, and the learner would drop its result.
                    log.info("job %s dropped: version %d superseded", job.job_id, job.version)
                    with contextlib.suppress(QueueError):
                        await consumer.ack(delivery)
                    return None
                log.warning("job %s waits for a dependency: %s", job.job_id, exc)
                if self.stopping.is_set() or time.monotonic() > deadline:
                    return None
            except Exception as exc:  # the rollout itself failed: report it, no retry
                log.exception("job %s failed", job.job_id)
                return failed_result(job, self.name, f"{exc.__class__.__name__}: {exc}", started)
            await asyncio.sleep(delay)
            delay = min(delay * 2, consumer.config.claim_idle_ms / 3000)
            try:
                if not await consumer.touch(delivery):
                    return None  # reclaimed by another worker, or done
            except QueueError:
                return None

    async def _take_loop(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        while not self.stopping.is_set():
            try:
                consumers = await self._consumers()
            except (RedisError, QueueError) as exc:
                # Redis away (restarting): keep the worker, look again shortly.
                log.warning("redis at %s: %s; retrying", self.settings.redis_url, exc)
                await asyncio.sleep(self.settings.worker_poll_s * 4)
                continue
            took = False
            for consumer in consumers:
                free = self.settings.worker_concurrency - len(tasks)
                if free <= 0:
                    break
                try:
                    deliveries = await consumer.take(count=free, block_ms=0)
                except QueueError as exc:
                    log.warning("run %s: %s", consumer.config.run_id, exc)
                    # Made again next pass, group included (a Redis that restarted empty).
                    self.consumers.pop(consumer.config.run_id, None)
                    continue
                for delivery in deliveries:
                    took = True
                    task = asyncio.create_task(self._process(consumer, delivery))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if not took:
                await asyncio.sleep(self.settings.worker_poll_s if not tasks else 0.05)
            elif len(tasks) >= self.settings.worker_concurrency:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks:
            await asyncio.wait(tasks)

    async def run(self) -> None:
        log.info(
            "rollout worker %s: policy %s, magnifier %s, redis %s",
            self.name,
            self.settings.policy_url,
            self.settings.magnifier_url,
            self.settings.redis_url,
        )
        while not self.stopping.is_set():
            try:
                await self.connect()
                break
            except DependencyDown as exc:
                log.info("waiting for the policy at %s (%s)", self.settings.policy_url, exc)
                await asyncio.sleep(self.settings.worker_poll_s * 4)
        try:
            await self._take_loop()
        finally:
            await self.close()

    async def close(self) -> None:
        for consumer in self.consumers.values():
            with contextlib.suppress(Exception):
                await consumer.aclose()
        await self.magnifier.close()
        if self.policy is not None:
            await self.policy.close()
        await self.policy_client.close()
        await self.redis.aclose()
