"""Several upstream engines behind one policy: which one serves a request.

Each conversation goes to the upstream with the fewest requests in flight, and then sticks
there: its routing key (engines/wire_images.py, ``wire_messages``: the system prompt, the
question and the original image) maps to the upstream that took it first, so round 2 of an
episode, and the other rollouts of a GRPO group, find their prompt in that upstream's prefix
cache. Stickiness yields to load when the sticky upstream has ``sticky_slack`` more requests
in flight than the least loaded one, as cache-aware routers do (SGLang's model gateway,
docs/concepts/routing/cache-aware.md, ``--balance-abs-threshold``; vLLM production-stack's
load-aware routing).

An upstream that cannot be reached is marked down for ``retry_s`` and skipped; after that it
counts as up again, and the engine checks it before its next request. Plain data and
arithmetic, no I/O: the engine (openai_upstream.py) does the HTTP.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# Routing keys remembered (least recently used dropped first): a few steps of rollouts.
MAX_STICKY_KEYS = 65_536


@dataclass
class Upstream:
    url: str  # the /v1 base URL
    in_flight: int = 0
    down_until: float = 0.0  # monotonic time before which it is skipped; 0: up
    problem: str | None = None  # why it was last marked down
    last_ok: float = 0.0  # monotonic time of its last passed check
    # Per-upstream facts learned by the engine.
    mode_checked: bool = False
    detokenize: bool = True
    adapters: list[str] = field(default_factory=list)

    def up(self, now: float) -> bool:
        return self.down_until <= now


class UpstreamPool:
    def __init__(
        self,
        urls: list[str],
        *,
        retry_s: float = 5.0,
        sticky_slack: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("at least one upstream URL is needed")
        if len(set(urls)) != len(urls):
            raise ValueError(f"an upstream URL is listed twice: {urls}")
        self.upstreams = [Upstream(url.rstrip("/")) for url in urls]
        self.retry_s = retry_s
        self.sticky_slack = sticky_slack
        self.clock = clock
        self._sticky: OrderedDict[str, Upstream] = OrderedDict()

    def __iter__(self) -> Iterator[Upstream]:
        return iter(self.upstreams)

    def __len__(self) -> int:
        return len(self.upstreams)

    def available(self) -> list[Upstream]:
        now = self.clock()
        return [u for u in self.upstreams if u.up(now)]

    def pick(self, key: str | None, exclude: frozenset[str] = frozenset()) -> Upstream | None:
        """The upstream for a request with routing key ``key``, among those not in
        ``exclude`` (urls already tried for this request); None when that leaves none."""
        now = self.clock()
        candidates = [u for u in self.upstreams if u.url not in exclude]
        up = [u for u in candidates if u.up(now)]
        if not up:
            # Every one is down: try the one due back soonest rather than fail unasked (with
            # one upstream, that is every request, as before there was a pool); the engine
            # checks it first, so a dead one costs a refused connection.
            return min(candidates, key=lambda u: u.down_until) if candidates else None
        least = min(up, key=lambda u: u.in_flight)
        sticky = self._sticky.get(key) if key else None
        if (
            sticky is not None
            and sticky in up
            and sticky.in_flight <= least.in_flight + self.sticky_slack
        ):
            chosen = sticky
        else:
            chosen = least
        if key:
            self._sticky[key] = chosen
            self._sticky.move_to_end(key)
            while len(self._sticky) > MAX_STICKY_KEYS:
                self._sticky.popitem(last=False)
        return chosen

    @contextmanager
    def lease(self, upstream: Upstream) -> Iterator[Upstream]:
        """Counts a request in flight on ``upstream`` while the block runs."""
        upstream.in_flight += 1
        try:
            yield upstream
        finally:
            upstream.in_flight -= 1

    def mark_down(self, upstream: Upstream, problem: str) -> None:
        upstream.down_until = self.clock() + self.retry_s
        upstream.problem = problem
        # A restarted engine forgets what it was told: check its log-probs mode again.
        upstream.mode_checked = False

    def mark_up(self, upstream: Upstream) -> None:
        upstream.down_until = 0.0
        upstream.problem = None
        upstream.last_ok = self.clock()
