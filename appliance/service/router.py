"""The router: which generator answers a request, decided without the model where it can.

Most requests are answered by the local model. With ``escalation.enabled``,
a request goes to the remote (bigger) model when it asks for it (``tier:
remote``), when the device is hot (``level_at_least``), busy (``queue_over``),
or the question looks hard (``keywords``, ``min_words``); or, with
``confidence_below``, when the local model's first tokens are unsure of
themselves, in which case the local generation is cut after them. A remote
that fails, stalls or is skipped by its circuit breaker means a local answer
with ``escalation.fallback`` saying why. Toy mode never escalates; a
grammar-constrained request (an action decision, tools) stays local; only the
system prompt and the question ever leave the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from appliance.config.schema import EscalationSettings, ThermalLevel
from appliance.generate.base import GenerationFailed, Generator, Tier
from appliance.generate.breaker import CircuitBreaker
from appliance.llm import ChatRequest, Completion
from appliance.llm.types import Confidence, OnChunk
from appliance.logs import get_logger
from appliance.protocol.answer import Escalation
from appliance.protocol.messages import Request

log = get_logger("router")

CONFIDENCE_TOKENS = 8
"""Local tokens whose mean log-probability decides a ``confidence_below`` escalation."""


class ChunkStream(Protocol):
    """Where a request's chunks go; :meth:`restart` voids those sent so far."""

    def __call__(self, chunk: Any) -> None:
        """One chunk of answer text."""

    def restart(self) -> None:
        """The text streamed so far is void: another generator starts over."""


@dataclass(frozen=True)
class Routed:
    """A completion and where it came from (``escalation``: why it was sent away, if it was)."""

    completion: Completion
    tier: Tier
    escalation: Escalation | None = None


class LocalGenerator(Generator, Protocol):
    """The device's own model, which can also read a question before it is finished."""

    def prefill(self, request: ChatRequest) -> None:
        """Read ``request``'s prompt so far while idle; never answered."""


class Router:
    """Runs each request on the local model or, when the rules say so, the remote one."""

    def __init__(self, local: LocalGenerator, remote: Generator | None = None,
                 settings: EscalationSettings | None = None,
                 levels: tuple[ThermalLevel, ...] = (), kid_safe: bool = False,
                 breaker: CircuitBreaker | None = None,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.local, self.remote = local, remote
        self.settings = settings or EscalationSettings()
        self.kid_safe = kid_safe
        self.on_change = on_change
        names = [level.name for level in levels]
        wanted = self.settings.route.level_at_least
        self._hot_from = names.index(wanted) if wanted in names else None
        self._levels = names
        self.breaker = breaker or CircuitBreaker(self.settings.breaker_failures,
                                                 self.settings.breaker_s)
        self._running: dict[str, Generator] = {}

    @property
    def escalates(self) -> bool:
        """Whether anything may leave the device at all."""
        return self.remote is not None and self.settings.enabled and not self.kid_safe

    def _may_escalate(self, request: Request, chat: ChatRequest) -> bool:
        return (self.escalates and request.tier != "local" and chat.json_schema is None
                and request.source in self.settings.sources)

    def reason(self, request: Request, chat: ChatRequest, level: ThermalLevel,
               queued: int) -> str | None:
        """Why this request should go to the remote model, before any local token."""
        if not self._may_escalate(request, chat):
            return None
        route = self.settings.route
        if request.tier == "remote":
            return "asked"
        if self._hot_from is not None and level.name in self._levels and \
                self._levels.index(level.name) >= self._hot_from:
            return "heat"
        if route.queue_over is not None and queued > route.queue_over:
            return "queue"
        said = chat.text.lower()
        if any(keyword.lower() in said for keyword in route.keywords):
            return "keywords"
        if route.min_words is not None and len(chat.text.split()) >= route.min_words:
            return "words"
        return None

    async def run(self, request: Request, chat: ChatRequest, stream: ChunkStream, *,
                  level: ThermalLevel, queued: int = 0) -> Routed:
        """Answer ``chat`` for ``request`` on the right generator."""
        reason = self.reason(request, chat, level, queued)
        if reason is not None:
            return await self._escalate(request, chat, stream, Escalation(reason))
        watch = self.settings.route.confidence_below
        if watch is not None and self._may_escalate(request, chat):
            chat = replace(chat, confidence=Confidence(CONFIDENCE_TOKENS, watch))
        completion = await self._on(self.local, request, chat, stream)
        if completion.low_confidence:
            stream.restart()
            return await self._escalate(request, replace(chat, confidence=None), stream,
                                        Escalation("confidence", confidence=completion.confidence,
                                                   local_tokens=completion.tokens))
        return Routed(completion, "local")

    async def _escalate(self, request: Request, chat: ChatRequest, stream: ChunkStream,
                        info: Escalation) -> Routed:
        assert self.remote is not None
        log.info("escalating", reason=info.reason, source=request.source)  # never the text
        if not self.breaker.allow():
            info = replace(info, fallback=(f"the remote model is skipped after repeated "
                                           f"failures (last: {self.breaker.last_error})"))
        else:
            private = ChatRequest(chat.text, max_tokens=chat.max_tokens, id=chat.id,
                                  system_prompt=chat.system_prompt, sampling=chat.sampling,
                                  stop=chat.stop)
            sent = _Counting(stream)
            try:
                completion = await self._on(self.remote, request, private, sent)
            except GenerationFailed as exc:
                if self.breaker.failed(str(exc)):
                    log.warning("remote_skipped", for_s=self.settings.breaker_s,
                                error=str(exc))
                self.on_change()
                log.warning("escalation_failed", reason=info.reason, error=str(exc))
                info = replace(info, fallback=str(exc))
                if sent.count:
                    stream.restart()
            else:
                self.breaker.succeeded()
                self.on_change()
                return Routed(completion, "remote", info)
        completion = await self._on(self.local, request, replace(chat, confidence=None),
                                    stream)
        return Routed(completion, "local", info)

    async def _on(self, generator: Generator, request: Request, chat: ChatRequest,
                  stream: OnChunk) -> Completion:
        self._running[request.id] = generator
        try:
            return await generator.generate(chat, stream)
        finally:
            self._running.pop(request.id, None)

    def prefill(self, chat: ChatRequest) -> None:
        """Let the local model read a question that is still being spoken."""
        self.local.prefill(chat)

    def cancel(self, request_id: str) -> None:
        """Cancel ``request_id`` wherever it runs."""
        generator = self._running.get(request_id, self.local)
        generator.cancel(request_id)

    def set_budget(self, tokens: int | None) -> None:
        """The live token budget, for every generator."""
        self.local.set_budget(tokens)
        if self.remote is not None:
            self.remote.set_budget(tokens)

    def describe(self) -> dict[str, Any] | None:
        """The remote's health, for the state (``None`` without escalation)."""
        if not self.escalates:
            return None
        assert self.remote is not None
        return {"model": self.remote.name, **self.breaker.describe()}


class _Counting:
    """A stream that counts what went through it (to know whether a restart is due)."""

    def __init__(self, stream: ChunkStream) -> None:
        self.stream, self.count = stream, 0

    def __call__(self, chunk: Any) -> None:
        self.count += 1
        self.stream(chunk)
