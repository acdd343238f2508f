"""The one door from the APIs to the dispatcher: rate limits, the thermal gate, the queue.

Every API request (HTTP or Wyoming) passes :meth:`ApiGate.submit`, which
refuses it while the device cools down, when its client asks too often, or
when the queue is full, each as an :class:`~appliance.api.errors.ApiError`.
Otherwise the request joins the dispatcher's queue like any other (priority,
preemption of sensor rules, the thermal budget, cancel) and a :class:`Pending`
receives its chunks and its answer on the event loop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

from appliance.api.errors import ApiError, Problem
from appliance.llm import ChatRequest, Chunk, new_request_id
from appliance.protocol.messages import Api, Request
from appliance.service.dispatcher import Dispatcher, Rejected
from appliance.service.ratelimit import RateLimiter

COOLING_DOWN = "the appliance is cooling down; ask again in a minute"
COOLING_RETRY_S = 60
QUEUE_RETRY_S = 5


class Pending:
    """One submitted request: its chunks as they stream, then its answer (a dispatcher watcher)."""

    def __init__(self, request: Request, dispatcher: Dispatcher) -> None:
        self.request = request
        self._dispatcher = dispatcher
        self._events: asyncio.Queue[Chunk | dict[str, Any]] = asyncio.Queue()
        self.final: dict[str, Any] | None = None

    def chunk(self, chunk: Chunk) -> None:
        """Answer text as it streams (called by the dispatcher)."""
        self._events.put_nowait(chunk)

    def answer(self, payload: dict[str, Any]) -> None:
        """The final answer (called by the dispatcher)."""
        self.final = payload
        self._events.put_nowait(payload)

    async def events(self) -> AsyncIterator[Chunk | dict[str, Any]]:
        """Every chunk, then the answer's payload, as they arrive."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, dict):
                return

    async def result(self) -> dict[str, Any]:
        """Wait for the answer's payload (chunks are dropped)."""
        async for event in self.events():
            if isinstance(event, dict):
                return event
        raise AssertionError("events() always ends with the answer")

    def cancel(self) -> None:
        """The client went away: end the generation (or drop it from the queue)."""
        if self.final is None:
            self._dispatcher.cancel(self.request.id)


def check_answer(payload: dict[str, Any]) -> None:
    """Raise the :class:`ApiError` for an answer that no generation could give."""
    reason = payload.get("finish_reason")
    if reason == "error":
        message = str(payload.get("error") or "the answer could not be generated")
        if "more than llm.n_ctx" in message:
            raise ApiError(Problem.CONTEXT_TOO_LONG, message, param="messages")
        if "restarting" in message:
            raise ApiError(Problem.UNAVAILABLE, message, retry_after_s=QUEUE_RETRY_S)
        raise ApiError(Problem.INTERNAL, message)
    if reason == "throttled" and not payload.get("tokens"):
        # The level rose to "no generation" while the request waited in the queue.
        raise ApiError(Problem.COOLING_DOWN, COOLING_DOWN, retry_after_s=COOLING_RETRY_S)


class ApiGate:
    """Submits API requests to ``dispatcher``, one :class:`RateLimiter` for all APIs."""

    def __init__(self, dispatcher: Dispatcher, limiter: RateLimiter) -> None:
        self.dispatcher = dispatcher
        self.limiter = limiter

    def submit(self, chat: ChatRequest, client: str, max_tokens: int | None = None,
               api: Api = "http") -> Pending:
        """Queue ``chat`` for ``client`` (its address) of ``api``; raises :class:`ApiError`."""
        if self.dispatcher.level.max_tokens == 0:
            raise ApiError(Problem.COOLING_DOWN, COOLING_DOWN, retry_after_s=COOLING_RETRY_S)
        if not self.limiter.allow(client):
            per_minute = int(self.limiter.capacity)
            raise ApiError(Problem.RATE_LIMITED,
                           f"too many requests from {client}: at most {per_minute} a minute",
                           retry_after_s=math.ceil(60 / max(per_minute, 1)))
        request = Request(id=new_request_id(), source="api", text=chat.text,
                          max_tokens=max_tokens, client=client, chat=chat, api=api)
        pending = Pending(request, self.dispatcher)
        try:
            self.dispatcher.submit(request, pending)
        except Rejected as exc:
            raise ApiError(Problem.QUEUE_FULL, str(exc), retry_after_s=QUEUE_RETRY_S) from None
        return pending
