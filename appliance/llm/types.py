"""Plain data that goes in and out of the model engine (and across the worker pipe)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "throttled", "cancelled", "error"]
Role = Literal["user", "assistant", "tool"]


def new_request_id() -> str:
    """A short random request id."""
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Turn:
    """An earlier message of a conversation (the system prompt is separate)."""

    role: Role
    content: str


@dataclass(frozen=True)
class Sampling:
    """Per-request overrides of ``llm`` sampling settings (``None``: the configured value)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Confidence:
    """Watch the mean log-probability of the first ``tokens`` tokens.

    When it falls below ``below`` the generation stops early (``finish_reason:
    "cancelled"``, ``low_confidence`` set), so the request can go to a bigger model.
    """

    tokens: int
    below: float


@dataclass(frozen=True)
class ChatRequest:
    """One question for the model.

    ``max_tokens`` caps this answer (``None``: the configured default);
    ``system_prompt`` replaces the configured one (``None``: keep it);
    ``history`` holds earlier turns; ``context`` holds reference passages
    (from the manuals, the most relevant first) put before the question as
    data; ``json_schema`` (JSON text) constrains the output with a grammar;
    ``stop`` ends the answer at any of these strings; ``adapter`` names the LoRA
    adapter of ``llm.adapters`` to answer with (``None``: the base model).
    ``think`` is a client's wish (an API's ``think``; ``None``: the device's
    ``llm.thinking`` decides), ``thinking_budget`` the most tokens a thinking
    model may think for, before the thermal share (0: it does not think).
    ``priority`` is its request's queue priority (lower first: voice is 0): when
    more requests run than are decoded together, the most urgent go on.
    """

    text: str
    max_tokens: int | None = None
    system_prompt: str | None = None
    id: str = field(default_factory=new_request_id)
    history: tuple[Turn, ...] = ()
    context: tuple[str, ...] = ()
    json_schema: str | None = None
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()
    confidence: Confidence | None = None
    prompt_lookup: bool = False
    adapter: str | None = None
    keep_state: bool = False  # a conversation's turn: its follow-up reads only itself
    think: bool | None = None
    thinking_budget: int = 0
    priority: int = 1

    def to_data(self) -> dict[str, Any]:
        """Plain JSON-able fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> ChatRequest:
        """The inverse of :meth:`to_data`; raises ``TypeError``/``ValueError`` on bad data."""
        fields = dict(data)
        fields["history"] = tuple(Turn(**t) for t in fields.get("history", ()))
        fields["sampling"] = Sampling(**fields.get("sampling", {}))
        fields["stop"] = tuple(fields.get("stop", ()))
        fields["context"] = tuple(fields.get("context", ()))
        if fields.get("confidence") is not None:
            fields["confidence"] = Confidence(**fields["confidence"])
        request = cls(**fields)
        if not isinstance(request.text, str) or not isinstance(request.id, str):
            raise TypeError("a request needs text and id strings")
        return request


@dataclass(frozen=True)
class Chunk:
    """A piece of answer text as it is generated; ``seq`` counts from 0."""

    request_id: str
    seq: int
    delta: str


OnChunk = Callable[[Chunk], None]
"""Hears each :class:`Chunk` of an answer as it is generated."""


@dataclass(frozen=True)
class Completion:
    """A finished answer and how it went.

    ``evaluated_tokens``: prompt tokens the model had to read for this answer
    (the rest came from a cached state); ``n_threads``: decode threads in use
    at the end; ``confidence``: the mean log-probability that was watched, if any;
    ``drafted``/``accepted``: prompt-lookup draft tokens proposed and kept;
    ``thinking``: what a thinking model thought before it answered (never part
    of ``text``), in ``thinking_tokens`` tokens and ``thinking_ms``.
    """

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
    evaluated_tokens: int = 0
    n_threads: int = 0
    confidence: float | None = None
    low_confidence: bool = False
    drafted: int = 0
    accepted: int = 0
    thinking: str = ""
    thinking_tokens: int = 0
    thinking_ms: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """The public JSON fields of an answer."""
        fields: dict[str, object] = {
            "id": self.id, "text": self.text, "tokens": self.tokens,
            "finish_reason": self.finish_reason, "ttft_ms": round(self.ttft_ms, 1),
            "tokens_per_s": round(self.tokens_per_s, 2), "total_ms": round(self.total_ms, 1),
            "ms_per_token": round(self.total_ms / self.tokens, 1) if self.tokens else None,
            "model": self.model,
        }
        if self.n_threads:
            fields["n_threads"] = self.n_threads
        return fields

    def to_data(self) -> dict[str, Any]:
        """Plain JSON-able fields (all of them, for the worker pipe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Completion:
        """The inverse of :meth:`to_data`."""
        return cls(**data)
