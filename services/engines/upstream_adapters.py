"""LoRA adapters on every upstream of a pool, or on none: vLLM's ``/v1/load_lora_adapter``
and ``/v1/unload_lora_adapter`` fanned out, a refusal rolled back, and an upstream that was
down given the adapters it missed before it serves again (engines/upstream_pool.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from magsrl.common.errors import InvalidInput, MagsrlError, ServiceUnavailable
from magsrl.engines.upstream_pool import Upstream, UpstreamPool
from magsrl.engines.upstream_replies import raise_for, raise_lora_error
from magsrl.zoom.engine import UnknownModel

# Failures that say the upstream process or its network is gone (refused, reset, closed
# mid-answer): it is marked down and the request goes to another. A timeout is not one of
# them: a slow upstream is busy, and sending its work to another would double the load.
UNREACHABLE = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)

Post = Callable[[Upstream, str, dict[str, Any]], Awaitable[httpx.Response]]


class AdapterFanOut:
    def __init__(self, pool: UpstreamPool, post: Post) -> None:
        self.pool = pool
        self.post = post  # POST to one upstream; ServiceUnavailable from the httpx error
        # Adapters loaded through this engine, name -> path: an upstream that comes back
        # (a restarted vLLM has forgotten them) gets them again before it serves.
        self.loaded: dict[str, str] = {}

    async def restore(self, upstream: Upstream) -> str | None:
        """Loads on ``upstream`` (back from down, or new) the adapters it lacks; why it
        could not, or None."""
        for name, path in self.loaded.items():
            if name in upstream.adapters:
                continue
            try:
                resp = await self.post(upstream, "/load_lora_adapter", _load_body(name, path))
                if resp.status_code >= 400:
                    raise_lora_error(resp, path)
                raise_for(resp, upstream.url)
            except MagsrlError as exc:
                return f"upstream {upstream.url} could not load adapter '{name}' again: {exc}"
            upstream.adapters.append(name)
        return None

    async def load(self, name: str, path: str) -> None:
        """Loads on every reachable upstream. One refusal unloads it from the others and
        raises, naming the upstream; an unreachable one is marked down and gets the adapter
        when it comes back (``restore``)."""
        targets = self.pool.available()
        if not targets:
            raise ServiceUnavailable(f"no upstream is reachable to load adapter '{name}'")
        outcomes = await asyncio.gather(
            *(self._load_on(u, name, path) for u in targets), return_exceptions=True
        )
        failed = [(u, e) for u, e in zip(targets, outcomes, strict=True) if e is not None]
        refusals = [(u, e) for u, e in failed if not isinstance(e.__cause__, UNREACHABLE)]
        if refusals or (failed and len(failed) == len(targets)):
            loaded = [u for u, e in zip(targets, outcomes, strict=True) if e is None]
            await asyncio.gather(*(self._unload_on(u, name) for u in loaded))
            upstream, exc = (refusals or failed)[0]
            if len(self.pool) == 1 or not isinstance(exc, MagsrlError):
                raise exc
            where = f"upstream {upstream.url} (of {len(self.pool)}; none keeps '{name}')"
            raise type(exc)(f"{where}: {exc.message}", param=exc.param) from exc
        self.loaded[name] = path

    async def _load_on(self, upstream: Upstream, name: str, path: str) -> BaseException | None:
        try:
            resp = await self.post(upstream, "/load_lora_adapter", _load_body(name, path))
            if resp.status_code >= 400:
                raise_lora_error(resp, path)
            raise_for(resp, upstream.url)
        except ServiceUnavailable as exc:
            if isinstance(exc.__cause__, UNREACHABLE):
                self.pool.mark_down(upstream, str(exc))
            return exc
        except MagsrlError as exc:
            return exc
        upstream.adapters.append(name)
        return None

    async def unload(self, name: str) -> None:
        self.loaded.pop(name, None)
        holders = list(self.pool)  # each one's list may be stale: ask them all
        errors = await asyncio.gather(*(self._unload_on(u, name) for u in holders))
        refused = [(u, e) for u, e in zip(holders, errors, strict=True) if e is not None]
        if refused:
            upstream, exc = refused[0]
            raise InvalidInput(f"upstream {upstream.url} did not unload '{name}': {exc}")

    async def _unload_on(self, upstream: Upstream, name: str) -> MagsrlError | None:
        """None when ``upstream`` no longer holds ``name`` (unloaded, unknown there, or
        down: a restarted engine has forgotten it anyway); else its refusal."""
        if name in upstream.adapters:
            upstream.adapters.remove(name)
        try:
            resp = await self.post(upstream, "/unload_lora_adapter", {"lora_name": name})
            raise_for(resp, upstream.url)
        except (UnknownModel, ServiceUnavailable):
            return None
        except MagsrlError as exc:
            return exc
        return None


def _load_body(name: str, path: str) -> dict[str, str]:
    return {"lora_name": name, "lora_path": path}
