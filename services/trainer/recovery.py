"""What the trainer treats as a dependency that is away rather than a run that failed.

While Redis, the policy or the magnifier does not answer (a crash that ``magsrl up`` is
restarting, a network blip), a run pauses instead of failing: ``runs.py`` waits until
``dependencies_up`` and resumes the run from its last checkpoint. Results already in Redis
are kept (a resumed step re-enqueues only the jobs without one).
"""

from __future__ import annotations

import httpx
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from magsrl.clients.magnifier import MagnifierUnavailable
from magsrl.trainer.config import TrainerSettings
from magsrl.trainer.queue_common import QueueUnavailable

# Longest sleep between two looks at the dependencies while a run is paused.
DEPENDENCY_POLL_MAX_S = 5.0
PROBE_TIMEOUT_S = 3.0


class DependencyDown(Exception):
    """The policy (or another service the run needs) did not answer; the run pauses."""


def dependency_errors() -> tuple[type[BaseException], ...]:
    """Exceptions out of a run that mean "a dependency is away", not "the run is wrong"."""
    return (
        DependencyDown,
        QueueUnavailable,
        RedisConnectionError,
        RedisTimeoutError,
        MagnifierUnavailable,
        httpx.TransportError,
    )


def away(exc: BaseException) -> str:
    """Which dependency ``exc`` (one of ``dependency_errors``) says is away, and its words:
    the reason a paused run gives."""
    if isinstance(exc, QueueUnavailable | RedisConnectionError | RedisTimeoutError):
        return f"Redis is away ({exc})"
    if isinstance(exc, MagnifierUnavailable):
        return f"the magnifier is away ({exc})"
    if isinstance(exc, httpx.TransportError):
        try:
            where = f" at {exc.request.url.scheme}://{exc.request.url.netloc.decode()}"
        except RuntimeError:  # no request attached
            where = ""
        return f"a service{where} does not answer ({exc.__class__.__name__}: {exc})"
    return str(exc)  # DependencyDown: its message names the service


async def dependencies_up(settings: TrainerSettings, http: httpx.AsyncClient) -> bool:
    """True when Redis answers PING and the policy and magnifier answer ``/ready``."""
    client = aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S
    )
    try:
        await client.ping()
    except Exception:
        return False
    finally:
        await client.aclose()
    for url in (settings.policy_url, settings.magnifier_url):
        try:
            resp = await http.get(f"{url}/ready", timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError:
            return False
        if resp.status_code != 200:
            return False
    return True
