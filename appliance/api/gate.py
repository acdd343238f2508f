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
import dataclasses
import math
from collections.abc import AsyncIterator

from appliance.api.errors import ApiError, Problem
from appliance.errors import ErrorCode
from appliance.llm import ChatRequest, Chunk, new_request_id
from appliance.protocol.answer import Answer
from appliance.protocol.messages import Api, Request
from appliance.service.dispatcher import Dispatcher
from appliance.service.ratelimit import RateLimiter
from appliance.service.scheduler import Rejected

COOLING_DOWN = "the appliance is cooling down; ask again in a minute"
COOLING_RETRY_S = 60
QUEUE_RETRY_S = 5


class Pending:
    """One submitted request: its chunks as they stream, then its answer (a dispatcher watcher)."""

    def __init__(self, request: Request, dispatcher: Dispatcher) -> None:
        self.request = request
        self._dispatcher = dispatcher
        self._events: asyncio.Queue[Chunk | Answer] = asyncio.Queue()
        self.final: Answer | None = None
        self._sent = 0  # characters of answer text handed to the client so far
        self._again: str | None = None  # a restarted attempt's text, until it passes _sent

    def chunk(self, chunk: Chunk) -> None:
        """Answer text as it streams (called by the dispatcher)."""
        if self._again is not None:
            self._again += chunk.delta
            if len(self._again) <= self._sent:
                return  # the client has these characters already
            chunk = dataclasses.replace(chunk, delta=self._again[self._sent:])
            self._again = None
        self._sent += len(chunk.delta)
        self._events.put_nowait(chunk)

    def restart(self) -> None:
        """A retried or rerouted generation starts the text over (called by the dispatcher).

        A client cannot take back what it was streamed, so the new attempt's text
        goes on from where the client is: its first characters, as many as were
        sent, are not sent again (with greedy decoding they are the same; the final
        answer always carries the new attempt's whole text).
        """
        self._again = ""

    def answer(self, answer: Answer) -> None:
        """The final answer (called by the dispatcher)."""
        self.final = answer
        self._events.put_nowait(answer)

    async def events(self) -> AsyncIterator[Chunk | Answer]:
        """Every chunk, then the answer, as they arrive."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, Answer):
                return

    async def result(self) -> Answer:
        """Wait for the answer (chunks are dropped)."""
        async for event in self.events():
            if isinstance(event, Answer):
                return event
        raise AssertionError("events() always ends with the answer")

    def cancel(self) -> None:
        """The client went away: end the generation (or drop it from the queue)."""
        if self.final is None:
            self._dispatcher.cancel(self.request.id)


_PROBLEMS: dict[ErrorCode, Problem] = {
    ErrorCode.CONTEXT_TOO_LONG: Problem.CONTEXT_TOO_LONG,
    ErrorCode.WORKER_RESTARTING: Problem.UNAVAILABLE,
    ErrorCode.QUEUE_FULL: Problem.QUEUE_FULL,
    ErrorCode.RATE_LIMITED: Problem.RATE_LIMITED,
    ErrorCode.COOLING_DOWN: Problem.COOLING_DOWN,
    ErrorCode.CANCELLED: Problem.UNAVAILABLE,
    ErrorCode.INTERNAL: Problem.INTERNAL,
}
"""How the APIs name each kind of failure (each API then writes its own shape)."""

_RETRY_S: dict[ErrorCode, int] = {
    ErrorCode.WORKER_RESTARTING: QUEUE_RETRY_S, ErrorCode.QUEUE_FULL: QUEUE_RETRY_S,
    ErrorCode.COOLING_DOWN: COOLING_RETRY_S}


def check_answer(answer: Answer) -> None:
    """Raise the :class:`ApiError` for an answer that no generation could give."""
    error = answer.error
    if answer.failed:
        code = error.code if error is not None else ErrorCode.INTERNAL
        message = error.message if error is not None else "the answer could not be generated"
        raise ApiError(_PROBLEMS[code], message, retry_after_s=_RETRY_S.get(code),
                       param="messages" if code is ErrorCode.CONTEXT_TOO_LONG else None)
    if answer.finish_reason == "throttled" and not answer.tokens:
        # The level rose to "no generation" while the request waited in the queue.
        raise ApiError(Problem.COOLING_DOWN, COOLING_DOWN, retry_after_s=COOLING_RETRY_S)


class ApiGate:
    """Submits API requests to ``dispatcher``, one :class:`RateLimiter` for all APIs."""

    def __init__(self, dispatcher: Dispatcher, limiter: RateLimiter) -> None:
        self.dispatcher = dispatcher
        self.limiter = limiter

    def submit(self, chat: ChatRequest, client: str, max_tokens: int | None = None,
               api: Api = "http", conversation: str | None = None) -> Pending:
        """Queue ``chat`` for ``client`` (its address) of ``api``; raises :class:`ApiError`.

        ``conversation``: the conversation it continues (Wyoming's ``conversation_id``).
        """
        if self.dispatcher.level.max_tokens == 0:
            raise ApiError(Problem.COOLING_DOWN, COOLING_DOWN, retry_after_s=COOLING_RETRY_S)
        if not self.limiter.allow(client):
            per_minute = int(self.limiter.capacity)
            raise ApiError(Problem.RATE_LIMITED,
                           f"too many requests from {client}: at most {per_minute} a minute",
                           retry_after_s=math.ceil(60 / max(per_minute, 1)))
        request = Request(id=new_request_id(), source="api", text=chat.text,
                          max_tokens=max_tokens, client=client, chat=chat, api=api,
                          conversation=conversation)
        pending = Pending(request, self.dispatcher)
        try:
            self.dispatcher.submit(request, pending)
        except Rejected as exc:
            raise ApiError(_PROBLEMS[exc.code], str(exc),
                           retry_after_s=_RETRY_S.get(exc.code)) from None
        return pending
