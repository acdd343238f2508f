"""Per-client token buckets for questions."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """Allows ``per_minute`` requests per client, refilled continuously, bursts up to that."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def allow(self, client: str) -> bool:
        """Take one token for ``client``; ``False`` when its bucket is empty."""
        now = self.clock()
        tokens, at = self._buckets.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.refill_per_s)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return False
        self._buckets[client] = (tokens - 1.0, now)
        return True
