"""The router: which generator answers a request, decided without the model where it can.

Today there is one generator, the local model; escalation to a bigger model
adds the remote tier here, so the dispatcher never knows which one answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.generate.base import Generator, OnChunk, Tier
from appliance.llm import ChatRequest, Completion
from appliance.protocol.messages import Request


@dataclass(frozen=True)
class Routed:
    """A completion and where it came from."""

    completion: Completion
    tier: Tier
    escalation: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def answer_fields(self) -> dict[str, Any]:
        """The answer's public fields."""
        fields = {**self.completion.as_dict(), "tier": self.tier, **self.extra}
        if self.escalation is not None:
            fields["escalation"] = self.escalation
        return fields


class LocalGenerator(Generator, Protocol):
    """The device's own model, which can also read a question before it is finished."""

    def prefill(self, request: ChatRequest) -> None:
        """Read ``request``'s prompt so far while idle; never answered."""


class Router:
    """Runs each request on the right generator (``local`` for now)."""

    def __init__(self, local: LocalGenerator) -> None:
        self.local = local
        self._running: dict[str, Generator] = {}

    async def run(self, request: Request, chat: ChatRequest, on_chunk: OnChunk) -> Routed:
        """Answer ``chat`` for ``request``."""
        generator = self.local
        self._running[request.id] = generator
        try:
            completion = await generator.generate(chat, on_chunk)
        finally:
            self._running.pop(request.id, None)
        return Routed(completion, generator.tier)

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
