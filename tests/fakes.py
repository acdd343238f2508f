"""Fakes with the real interfaces, for unit tests that run in milliseconds.

- :class:`FakeGenerator` is a :class:`appliance.generate.base.Generator` (and a
  local one: it has ``prefill``) that plays a script: each call to ``generate``
  takes the next :class:`Reply` (chunks to stream, then a completion) or raises
  the next exception (:class:`GeneratorCrashed`, :class:`GeneratorUnavailable`,
  :class:`GenerationFailed`). A reply can ``hold`` on an :class:`asyncio.Event`
  after some chunks: the test decides when it goes on (or cancels it), so
  nothing sleeps.
- :class:`FakeClock` is a clock to hand to anything that takes ``clock=``
  (the circuit breaker): time moves only when the test says.
- :class:`FakeStream` is where one request's chunks go (the router's ``Stream``).
- :class:`FakeOutlet` is the bridge as :class:`appliance.service.outlets.Outlets`
  sees it: what it published and delivered.

    local = FakeGenerator([Reply(("Hel", "lo")), GeneratorCrashed("worker died")])
    completion = await local.generate(ChatRequest("hi"), on_chunk)  # "Hello"
    await local.generate(ChatRequest("hi"))                          # raises
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from appliance.generate.base import Tier
from appliance.llm.types import ChatRequest, Chunk, Completion, FinishReason, OnChunk
from appliance.protocol.messages import Outgoing


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    ``chunks`` stream in order; with ``hold``, generation waits on it after
    ``hold_after`` chunks (a cancel ends the wait too); ``crash`` is raised
    after the chunks (a worker that dies mid-answer). ``confidence`` /
    ``low_confidence`` are what a ``confidence_below`` watch would report.
    """

    chunks: tuple[str, ...] = ("ok",)
    finish_reason: FinishReason = "stop"
    hold: asyncio.Event | None = None
    hold_after: int = 0
    confidence: float | None = None
    low_confidence: bool = False
    crash: Exception | None = None


Step = Reply | Exception


class FakeGenerator:
    """A scripted generator; records what it was asked (see the module's docstring).

    When the script runs out, every further request is answered with ``("ok",)``.
    """

    def __init__(self, script: list[Step] | tuple[Step, ...] = (), *, name: str = "fake",
                 tier: Tier = "local") -> None:
        self._name, self._tier = name, tier
        self.script: list[Step] = list(script)
        self.requests: list[ChatRequest] = []
        self.cancelled: list[str] = []
        self.budgets: list[int | None] = []
        self.prefilled: list[ChatRequest] = []
        self.started = asyncio.Event()
        """Set when a generation has begun (cleared by the test to wait for the next one)."""
        self.holding = asyncio.Event()
        """Set while a reply waits on its ``hold`` (its first ``hold_after`` chunks are out)."""
        self._cancel: dict[str, asyncio.Event] = {}

    @property
    def name(self) -> str:
        """What answers, as reported in an answer's ``model``."""
        return self._name

    @property
    def tier(self) -> Tier:
        """``local`` or ``remote``, as constructed."""
        return self._tier

    async def generate(self, request: ChatRequest, on_chunk: OnChunk | None = None,
                       ) -> Completion:
        """Play the next step of the script for ``request``."""
        self.requests.append(request)
        step = self.script.pop(0) if self.script else Reply()
        self.started.set()
        await asyncio.sleep(0)  # one loop turn, as a real generator yields at least once
        if isinstance(step, Exception):
            raise step
        cancel = self._cancel.setdefault(request.id, asyncio.Event())
        sent: list[str] = []
        try:
            for seq, delta in enumerate(step.chunks):
                if step.hold is not None and seq == step.hold_after:
                    await self._hold(step.hold, cancel)
                if cancel.is_set():
                    return self._completion(request, sent, "cancelled", step)
                sent.append(delta)
                if on_chunk is not None:
                    on_chunk(Chunk(request.id, seq, delta))
            if step.hold is not None and step.hold_after >= len(step.chunks):
                await self._hold(step.hold, cancel)
            if step.crash is not None:
                raise step.crash
            finish = "cancelled" if cancel.is_set() else step.finish_reason
            return self._completion(request, sent, finish, step)
        finally:
            self._cancel.pop(request.id, None)

    async def _hold(self, hold: asyncio.Event, cancel: asyncio.Event) -> None:
        self.holding.set()
        try:
            await _first(hold, cancel)
        finally:
            self.holding.clear()

    def _completion(self, request: ChatRequest, sent: list[str], finish: FinishReason,
                    step: Reply) -> Completion:
        return Completion(request.id, "".join(sent), len(sent), finish, ttft_ms=1.0,
                          tokens_per_s=100.0, model=self._name, confidence=step.confidence,
                          low_confidence=step.low_confidence)

    def cancel(self, request_id: str) -> None:
        """End ``request_id``'s generation with ``finish_reason: cancelled``."""
        self.cancelled.append(request_id)
        self._cancel.setdefault(request_id, asyncio.Event()).set()

    def set_budget(self, tokens: int | None) -> None:
        """Record the live token budget."""
        self.budgets.append(tokens)

    def prefill(self, request: ChatRequest) -> None:
        """Record a question read ahead (the local generator's extra)."""
        self.prefilled.append(request)


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class FakeClock:
    """A monotonic clock that moves only when :meth:`advance` is called."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        self.now += seconds


@dataclass
class FakeStream:
    """A request's chunk stream: records the chunks and each restart (a ChunkStream)."""

    chunks: list[Chunk] = field(default_factory=list)
    restarts: int = 0

    def __call__(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)

    def restart(self) -> None:
        """The text streamed so far is void."""
        self.restarts += 1
        self.chunks.clear()

    @property
    def text(self) -> str:
        """The text streamed since the last restart."""
        return "".join(chunk.delta for chunk in self.chunks)


@dataclass
class FakeOutlet:
    """The bridge as the outlets use it: messages published now, and delivered ones."""

    published: list[Outgoing] = field(default_factory=list)
    delivered: list[tuple[str | None, list[Outgoing]]] = field(default_factory=list)

    def publish(self, message: Outgoing) -> None:
        """Send now, best effort (stream chunks)."""
        self.published.append(message)

    def deliver(self, request_id: str | None, messages: list[Outgoing]) -> None:
        """Retire ``request_id`` and send ``messages`` (recorded, in order)."""
        self.delivered.append((request_id, list(messages)))
