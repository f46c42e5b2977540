"""The worker's side of the rollout queue: take, complete, and the janitor that reclaims.

How delivery, reclaiming and dead-lettering work is described in ``queue.py``.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence

import redis.asyncio as aioredis

from magsrl.trainer.queue_common import (
    Delivery,
    Payload,
    QueueClientBase,
    QueueConfig,
    QueueError,
    decode_payload,
    encode_payload,
)

# XAUTOCLAIM's cursor value for "start of the PEL" and "scan finished".
PEL_START = "0-0"
# How many of its own pending entries a consumer inspects when sweeping trimmed ones (6.2).
GHOST_SCAN = 1000
TRIMMED_REASON = "trimmed from the jobs stream by MAXLEN before completion"


def default_consumer_name() -> str:
    """Unique per process, and readable in XINFO: host, pid, random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class RolloutConsumer(QueueClientBase):
    """A worker's side: take jobs (reclaiming dead workers' first), complete or ack them."""

    def __init__(
        self,
        client: aioredis.Redis,
        config: QueueConfig,
        *,
        name: str | None = None,
        url: str | None = None,
        owns_client: bool = False,
    ) -> None:
        super().__init__(client, config, url=url, owns_client=owns_client)
        self.name = name or default_consumer_name()
        self._claim_cursor = PEL_START
        self._next_reclaim = 0.0  # monotonic time; 0 runs the janitor on the first take

    async def take(self, count: int = 1, block_ms: int | None = None) -> list[Delivery]:
        """Up to ``count`` jobs: reclaimed stale ones first, then new ones (XREADGROUP ``>``).

        Blocks up to ``block_ms`` (default ``config.block_ms``; 0 = do not block) for new
        jobs when nothing was reclaimed; an empty list means there was nothing to do.
        """
        cfg = self.config
        block = cfg.block_ms if block_ms is None else block_ms
        if count < 1 or not 0 <= block <= cfg.block_ms:
            raise ValueError(f"need count >= 1 and 0 <= block_ms <= {cfg.block_ms} (config)")
        await self._ensure_group_once()
        out: list[Delivery] = []
        if time.monotonic() >= self._next_reclaim:
            out = await self.reclaim(count)
        if len(out) < count:
            out += await self._read_new(count - len(out), 0 if out else block)
        return out

    async def _read_new(self, count: int, block_ms: int) -> list[Delivery]:
        cfg = self.config
        with self._errors():
            reply = await self._client.xreadgroup(
                cfg.group,
                self.name,
                {cfg.jobs_key: ">"},
                count=count,
                block=block_ms or None,  # BLOCK 0 would mean "forever" to Redis
            )
        # One stream was read: RESP2 replies [[name, entries]], RESP3 {name: [entries]}.
        if isinstance(reply, dict):
            entries = [entry for value in reply.values() for entry in value[0]]
        else:
            entries = [entry for _name, chunk in reply or [] for entry in chunk]
        out: list[Delivery] = []
        for entry_id, fields in entries:
            delivery = await self._admit(entry_id, fields, deliveries=1)
            if delivery is not None:
                out.append(delivery)
        return out

    async def complete(self, delivery: Delivery, result: Payload) -> bool:
        """Store the result (first writer wins) and ack the job, atomically.

        True when this call stored the result; False when the job had already been
        completed (it ran twice after a reclaim): the first result is kept, this one dropped.
        """
        cfg = self.config
        data = encode_payload(result)
        with self._errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(cfg.result_key(delivery.job_id), data, nx=True, ex=cfg.result_ttl_s)
                pipe.xack(cfg.jobs_key, cfg.group, delivery.entry_id)
                pipe.xdel(cfg.jobs_key, delivery.entry_id)  # keeps XLEN == lag
                stored, _acked, _deleted = await pipe.execute()
        return bool(stored)

    async def ack(self, delivery: Delivery) -> bool:
        """Drop a job without a result (e.g. a stale policy version); False if already gone."""
        cfg = self.config
        with self._errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xack(cfg.jobs_key, cfg.group, delivery.entry_id)
                pipe.xdel(cfg.jobs_key, delivery.entry_id)
                acked, _deleted = await pipe.execute()
        return bool(acked)

    async def touch(self, delivery: Delivery) -> bool:
        """Reset the job's idle time, so the janitor leaves it with this (live) worker; the
        delivery counter is not bumped (XCLAIM JUSTID). False: it is no longer ours."""
        cfg = self.config
        if delivery.entry_id not in await self._delivery_counts([delivery.entry_id]):
            return False  # completed, or reclaimed by another worker meanwhile
        with self._errors():
            ids = await self._client.xclaim(
                cfg.jobs_key,
                cfg.group,
                self.name,
                min_idle_time=0,
                message_ids=[delivery.entry_id],
                justid=True,
            )
        return bool(ids)

    # ---- janitor -----------------------------------------------------------------------
    async def reclaim(self, count: int = 1) -> list[Delivery]:
        """Claim up to ``count`` jobs idle >= ``claim_idle_ms`` (their worker presumably died).

        Jobs past ``max_deliveries`` are dead-lettered instead of returned. Scans the PEL
        with XAUTOCLAIM's cursor across calls; ``take()`` reruns this every
        ``claim_idle_ms / 2``, or at once while the last scan still found work.
        """
        cfg = self.config
        with self._errors():
            reply = await self._client.xautoclaim(
                cfg.jobs_key,
                cfg.group,
                self.name,
                min_idle_time=cfg.claim_idle_ms,
                start_id=self._claim_cursor,
                count=count,
            )
        cursor, claimed = reply[0], reply[1]
        # Redis >= 7: a third element lists PEL entries whose stream entry was deleted.
        trimmed = list(reply[2]) if len(reply) > 2 else []
        live = [(entry_id, fields) for entry_id, fields in claimed if entry_id is not None]
        if len(live) < len(claimed):
            # Redis 6.2 returns such entries as nil (redis-py: (None, None)), ids lost.
            trimmed += await self._sweep_trimmed()
        self._claim_cursor = cursor
        if not claimed and cursor == PEL_START:  # full scan, nothing stale: rest a while
            self._next_reclaim = time.monotonic() + cfg.claim_idle_ms / 2000
        if trimmed:
            await self._bury_trimmed(trimmed)
        if not live:
            return []

        counts = await self._delivery_counts([entry_id for entry_id, _ in live])
        out: list[Delivery] = []
        for entry_id, fields in live:
            if entry_id not in counts:  # completed by its first worker since the claim
                continue
            deliveries = counts[entry_id]  # includes this claim: XAUTOCLAIM bumped it
            if deliveries > cfg.max_deliveries:
                await self._dead_letter(
                    entry_id,
                    fields,
                    f"not completed after {deliveries - 1} deliveries "
                    f"(max_deliveries={cfg.max_deliveries})",
                    deliveries - 1,
                )
                continue
            delivery = await self._admit(entry_id, fields, deliveries)
            if delivery is not None:
                out.append(delivery)
        return out

    async def _delivery_counts(self, entry_ids: Sequence[str]) -> dict[str, int]:
        """times_delivered of our own pending entries, from XPENDING's extended form."""
        cfg = self.config
        with self._errors():
            async with self._client.pipeline(transaction=False) as pipe:
                for entry_id in entry_ids:
                    pipe.xpending_range(
                        cfg.jobs_key, cfg.group, entry_id, entry_id, 1, consumername=self.name
                    )
                replies = await pipe.execute()
        return {row["message_id"]: int(row["times_delivered"]) for rows in replies for row in rows}

    async def _sweep_trimmed(self) -> list[str]:
        """Our pending entries whose stream entry no longer exists (Redis 6.2 path)."""
        cfg = self.config
        with self._errors():
            pending = await self._client.xpending_range(
                cfg.jobs_key, cfg.group, "-", "+", GHOST_SCAN, consumername=self.name
            )
            ids = [row["message_id"] for row in pending]
            async with self._client.pipeline(transaction=False) as pipe:
                for entry_id in ids:
                    pipe.xrange(cfg.jobs_key, entry_id, entry_id, count=1)
                rows = await pipe.execute()
        return [entry_id for entry_id, found in zip(ids, rows, strict=True) if not found]

    async def _bury_trimmed(self, entry_ids: Sequence[str]) -> None:
        cfg = self.config
        with self._errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xack(cfg.jobs_key, cfg.group, *entry_ids)  # a no-op on Redis 7
                for entry_id in entry_ids:
                    pipe.xadd(
                        cfg.dead_key,
                        {"entry_id": entry_id, "reason": TRIMMED_REASON},
                        maxlen=cfg.maxlen,
                        approximate=True,
                    )
                await pipe.execute()

    async def _dead_letter(
        self, entry_id: str, fields: dict[str, str], reason: str, deliveries: int
    ) -> None:
        """Move one entry to the dead-letter stream and out of the group, atomically."""
        cfg = self.config
        record = {
            "entry_id": entry_id,
            "job_id": fields.get("job_id", ""),
            "payload": fields.get("payload", ""),
            "reason": reason,
            "deliveries": str(deliveries),
            "consumer": self.name,
        }
        with self._errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xadd(cfg.dead_key, record, maxlen=cfg.maxlen, approximate=True)
                pipe.xack(cfg.jobs_key, cfg.group, entry_id)
                pipe.xdel(cfg.jobs_key, entry_id)
                await pipe.execute()

    async def _admit(
        self, entry_id: str, fields: dict[str, str], deliveries: int
    ) -> Delivery | None:
        """The entry as a Delivery, or None after dead-lettering it if it is malformed."""
        try:
            payload = decode_payload(fields["payload"])
            job_id = fields["job_id"]
        except (KeyError, ValueError, QueueError) as exc:
            # Retrying cannot fix a malformed entry; giving it to K workers would waste them.
            await self._dead_letter(entry_id, fields, f"malformed entry: {exc!r}", deliveries)
            return None
        return Delivery(entry_id=entry_id, job_id=job_id, payload=payload, deliveries=deliveries)
