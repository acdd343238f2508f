"""Plain data that goes in and out of the model engine."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "throttled", "cancelled", "error"]


def new_request_id() -> str:
    """A short random request id."""
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class ChatRequest:
    """One question for the model.

    ``max_tokens`` caps this answer (``None``: the configured default);
    ``system_prompt`` replaces the configured one (``None``: keep it).
    """

    text: str
    max_tokens: int | None = None
    system_prompt: str | None = None
    id: str = field(default_factory=new_request_id)


@dataclass(frozen=True)
class Chunk:
    """A piece of answer text as it is generated; ``seq`` counts from 0."""

    request_id: str
    seq: int
    delta: str


@dataclass(frozen=True)
class Completion:
    """A finished answer and how it went."""

    id: str
    text: str
    tokens: int
    finish_reason: FinishReason
    ttft_ms: float
    tokens_per_s: float
    model: str
    total_ms: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0

    def as_dict(self) -> dict[str, object]:
        """The public JSON fields of an answer."""
        return {
            "id": self.id, "text": self.text, "tokens": self.tokens,
            "finish_reason": self.finish_reason, "ttft_ms": round(self.ttft_ms, 1),
            "tokens_per_s": round(self.tokens_per_s, 2), "total_ms": round(self.total_ms, 1),
            "model": self.model,
        }
