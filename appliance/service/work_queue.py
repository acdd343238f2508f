"""The dispatcher's priority queue: voice, then questions, then sensor rules.

Sensor requests of one rule coalesce: while one is queued, a newer event
replaces its prompt instead of queueing another generation.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from appliance.protocol.messages import Request


class WorkQueue:
    """Prioritized, FIFO within a priority; :meth:`get` waits for work.

    The bound is the dispatcher's to enforce at intake, so that retries and
    requests restored from the journal always fit.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._items: dict[str, Request] = {}
        self._by_rule: dict[str, str] = {}
        self._order = itertools.count()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, request: Request, *, front: bool = False) -> None:
        """Queue ``request`` (``front``: ahead of its priority's others, for retries)."""
        order = -next(self._order) if front else next(self._order)
        heapq.heappush(self._heap, (request.priority, order, request.id))
        self._items[request.id] = request
        if request.rule is not None:
            self._by_rule[request.rule] = request.id
        self._ready.set()

    def queued_for_rule(self, rule: str) -> Request | None:
        """The queued request of ``rule``, if any."""
        request_id = self._by_rule.get(rule)
        return self._items.get(request_id) if request_id is not None else None

    def replace(self, request: Request) -> None:
        """Swap a queued request for an updated one with the same id (keeps its place)."""
        self._items[request.id] = request

    def remove(self, request_id: str) -> Request | None:
        """Take a queued request out; ``None`` if it is not queued."""
        request = self._items.pop(request_id, None)
        if request is not None and request.rule is not None:
            self._by_rule.pop(request.rule, None)
        return request

    async def get(self) -> Request:
        """Wait for and take the most urgent request."""
        while True:
            self._drop_removed()
            if self._heap:
                _, _, request_id = heapq.heappop(self._heap)
                return self.remove(request_id)  # type: ignore[return-value]
            self._ready.clear()
            await self._ready.wait()

    def _drop_removed(self) -> None:
        while self._heap and self._heap[0][2] not in self._items:
            heapq.heappop(self._heap)
