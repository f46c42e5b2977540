"""The rollout job queue: a Redis stream and consumer group between the learner and workers.

The learner (``RolloutQueue``) enqueues JSON jobs; any number of rollout workers
(``RolloutConsumer``) on any number of machines take them, run them and complete them with
a result, which the learner collects by job_id. Redis Streams are used directly through
``redis.asyncio`` (design.md, "Engineering decisions"); works with Redis >= 6.2.

Delivery guarantees:
- **At-least-once delivery.** ``take()`` reads with XREADGROUP ``>``, so each job goes to
  exactly one worker and stays in the group's pending list (PEL) until completed. A job
  whose worker died sits idle in the PEL; the janitor (``reclaim()``, which ``take()`` runs
  every ``claim_idle_ms / 2``) moves it with XAUTOCLAIM to a live worker after
  ``claim_idle_ms``. A slow but alive worker could therefore see its job run twice, unless
  it calls ``touch()`` now and then (the rollout worker does, every ``claim_idle_ms / 3``):
  XCLAIM JUSTID resets the entry's idle time without counting a delivery.
- **Idempotent results.** ``complete()`` writes ``SET result:<job_id> NX EX ttl``, XACK
  and XDEL in one MULTI/EXEC: the first completion wins, later ones are acked and return
  False, so a job run twice keeps exactly one result.
- **Dead letters.** XAUTOCLAIM bumps an entry's delivery counter. An entry reclaimed after
  ``max_deliveries`` deliveries (a poison job that kills or stalls every worker) is moved to
  the ``:dead`` stream with the reason, in one MULTI/EXEC (XADD dead, XACK, XDEL), and is
  never handed out again. Malformed entries go there at once.

Lag on Redis 6.2 (``XINFO GROUPS`` has no ``lag`` field before 7.0): every way a job
leaves the PEL here (complete, ack, dead-letter) also XDELs its entry in the same
transaction, so the stream holds exactly the outstanding jobs, and
``XLEN = undelivered + pending``, in O(1) on any version. This holds as long as only this
module acks the group. Backpressure waits while that number is >= ``max_lag``; the
``MAXLEN ~`` cap then never trims a live job and only guards against a runaway producer.

Entries trimmed away while pending (possible only with ``max_lag=None``) are reported by
XAUTOCLAIM: Redis 7 returns their ids as a third element and drops them from the PEL;
Redis 6.2 returns them as nil entries and keeps them in the PEL, so the janitor finds them
(pending but gone from the stream), acks them, and dead-letters them as "trimmed".

Keys (one run): ``<prefix>:<run_id>`` jobs stream, ``...:dead`` dead letters,
``...:results:<job_id>`` one string per result. The MULTI/EXECs span keys, so Redis
Cluster would need a hash tag in the prefix; a single Redis is what the design deploys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from magsrl.trainer.queue_common import (
    DeadLetter,
    Delivery,
    Payload,
    QueueClientBase,
    QueueConfig,
    QueueError,
    QueueFull,
    QueueStats,
    QueueUnavailable,
    ResultBatch,
    decode_payload,
    encode_payload,
)
from magsrl.trainer.queue_worker import RolloutConsumer

__all__ = [
    "DeadLetter",
    "Delivery",
    "QueueConfig",
    "QueueError",
    "QueueFull",
    "QueueStats",
    "QueueUnavailable",
    "ResultBatch",
    "RolloutConsumer",
    "RolloutQueue",
]

# SCAN/DEL batch size for purge().
PURGE_BATCH = 500


class RolloutQueue(QueueClientBase):
    """The learner's side: enqueue jobs with backpressure, collect results, inspect, purge."""

    async def lag(self) -> int:
        """Outstanding jobs: undelivered + delivered-but-not-completed (= XLEN, see module)."""
        with self._errors():
            return int(await self._client.xlen(self.config.jobs_key))

    async def enqueue(
        self, job_id: str, payload: Payload, *, timeout_s: float | None = None
    ) -> bool:
        """Add a job; False (nothing added) when a result for ``job_id`` already exists.

        While ``lag() >= max_lag`` this waits for workers to complete jobs, and raises
        ``QueueFull`` after ``timeout_s`` (default ``config.enqueue_timeout_s``).
        """
        cfg = self.config
        data = encode_payload(payload)
        await self._ensure_group_once()
        with self._errors():
            # A restarted learner re-enqueues a step's jobs; the finished ones are skipped.
            if await self._client.exists(cfg.result_key(job_id)):
                return False
            await self._wait_for_room(cfg.enqueue_timeout_s if timeout_s is None else timeout_s)
            await self._client.xadd(
                cfg.jobs_key,
                {"job_id": job_id, "payload": data},
                maxlen=cfg.maxlen,
                approximate=True,  # trims whole radix-tree nodes only: cheap, may overshoot
            )
        return True

    async def _wait_for_room(self, timeout_s: float) -> None:
        cfg = self.config
        if cfg.max_lag is None:
            return
        deadline = time.monotonic() + timeout_s
        while (lag := await self.lag()) >= cfg.max_lag:
            if time.monotonic() >= deadline:
                raise QueueFull(
                    f"rollout queue {cfg.jobs_key} has {lag} outstanding jobs (max_lag="
                    f"{cfg.max_lag}) and no worker completed one within {timeout_s:g}s; "
                    "check that rollout workers are running, start more, or raise max_lag"
                )
            await asyncio.sleep(cfg.poll_ms / 1000)

    async def results(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The results that have arrived, by job_id; missing ones are left out."""
        if not job_ids:
            return {}
        with self._errors():
            raws = await self._client.mget([self.config.result_key(j) for j in job_ids])
        return {j: decode_payload(raw) for j, raw in zip(job_ids, raws, strict=True) if raw}

    async def wait_results(
        self, job_ids: Sequence[str], timeout_s: float, poll_s: float | None = None
    ) -> ResultBatch:
        """Poll until every result arrived or ``timeout_s`` passed; never raises on timeout."""
        poll = self.config.poll_ms / 1000 if poll_s is None else poll_s
        deadline = time.monotonic() + timeout_s
        found: dict[str, dict[str, Any]] = {}
        missing = list(dict.fromkeys(job_ids))
        while True:
            found.update(await self.results(missing))
            missing = [j for j in missing if j not in found]
            if not missing or time.monotonic() >= deadline:
                return ResultBatch(results=found, missing=missing)
            await asyncio.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))

    async def drop_results(self, job_ids: Sequence[str]) -> int:
        """Delete results the learner has consumed, rather than holding them for the TTL."""
        if not job_ids:
            return 0
        with self._errors():
            return int(await self._client.delete(*[self.config.result_key(j) for j in job_ids]))

    async def stats(self) -> QueueStats:
        cfg = self.config
        with self._errors():
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xlen(cfg.jobs_key)
                pipe.xlen(cfg.dead_key)
                length, dead = await pipe.execute()
            try:
                groups = await self._client.xinfo_groups(cfg.jobs_key)
            except ResponseError:  # no stream yet
                groups = []
        group = next((g for g in groups if g["name"] == cfg.group), {})
        pending = int(group.get("pending", 0))
        return QueueStats(
            length=int(length),
            pending=pending,
            undelivered=max(int(length) - pending, 0),
            dead_letters=int(dead),
            consumers=int(group.get("consumers", 0)),
        )

    async def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """The oldest ``count`` dead-lettered jobs."""
        with self._errors():
            rows = await self._client.xrange(self.config.dead_key, count=count)
        return [
            DeadLetter(
                entry_id=fields.get("entry_id", entry_id),
                job_id=fields.get("job_id") or None,
                payload=decode_payload(fields["payload"]) if fields.get("payload") else None,
                reason=fields.get("reason", ""),
                deliveries=int(fields["deliveries"]) if fields.get("deliveries") else None,
            )
            for entry_id, fields in rows or []
        ]

    async def purge(self) -> int:
        """Delete every key of the run (jobs, group, dead letters, results); the count."""
        cfg = self.config
        deleted = 0
        with self._errors():
            deleted += int(await self._client.delete(cfg.jobs_key, cfg.dead_key))
            batch: list[str] = []
            async for key in self._client.scan_iter(match=cfg.results_pattern, count=PURGE_BATCH):
                batch.append(key)
                if len(batch) >= PURGE_BATCH:
                    deleted += int(await self._client.delete(*batch))
                    batch = []
            if batch:
                deleted += int(await self._client.delete(*batch))
        self._group_ready = False
        return deleted
