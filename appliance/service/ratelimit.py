"""Token buckets for questions: one per client, and one for everyone together.

MQTT does not tell a subscriber who published a message, so the client key
(a user property) is only what the asker says it is. Per-client buckets keep
honest clients from crowding each other out; the shared bucket, at
:data:`TOTAL_FACTOR` times the per-client rate, is what a client that invents a
new name for every question runs into. The table of clients is bounded.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

TOTAL_FACTOR = 4
MAX_CLIENTS = 1024


class RateLimiter:
    """Allows ``per_minute`` requests per client, refilled continuously, bursts up to that."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._total = (self.capacity * TOTAL_FACTOR, clock())

    def _level(self, bucket: tuple[float, float], capacity: float, now: float) -> float:
        tokens, at = bucket
        return min(capacity, tokens + (now - at) * self.refill_per_s * capacity / self.capacity)

    def allow(self, client: str) -> bool:
        """Take a token for ``client`` and one from everyone's; ``False`` if either is empty."""
        now = self.clock()
        total = self._level(self._total, self.capacity * TOTAL_FACTOR, now)
        mine = self._level(self._buckets.get(client, (self.capacity, now)), self.capacity, now)
        if mine < 1.0 or total < 1.0:
            self._remember(client, (mine, now))
            self._total = (total, now)
            return False
        self._remember(client, (mine - 1.0, now))
        self._total = (total - 1.0, now)
        return True

    def _remember(self, client: str, bucket: tuple[float, float]) -> None:
        self._buckets[client] = bucket
        self._buckets.move_to_end(client)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)  # the longest idle: its bucket is the fullest

    def __len__(self) -> int:
        return len(self._buckets)
