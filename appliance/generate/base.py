"""The one seam between the dispatcher and whatever writes answers: a :class:`Generator`.

The local model worker, an OpenAI-compatible server and another appliance over
MQTT all look the same to the dispatcher: they stream a completion, can be
cancelled, and take a live token budget. A fake generator is enough to test
the dispatcher's retry, preemption, thermal and cancel logic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from appliance.errors import ErrorCode, ModelError
from appliance.llm.types import ChatRequest, Completion, FinishReason, OnChunk

Tier = Literal["local", "remote"]

BYTES_PER_TOKEN = 16
"""A remote answer's byte budget per token of its token budget (a token averages 4 bytes)."""
MAX_TOKENS = 32768
"""The token budget of a request that names none (``llm.max_tokens``'s own bound)."""


class GenerationFailed(ModelError):
    """The generator refused or could not finish a request; the message says why.

    ``code`` is the kind (for the APIs' status codes); by default the class's.
    """

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class GeneratorCrashed(GenerationFailed):
    """The generator died while the request ran; running it again may work."""


class GeneratorUnavailable(GenerationFailed):
    """The generator cannot take requests now (restarting, unreachable, circuit open)."""

    code = ErrorCode.WORKER_RESTARTING


class Generator(Protocol):
    """Anything that answers chat requests."""

    @property
    def name(self) -> str:
        """What answers, as reported in an answer's ``model``."""

    @property
    def tier(self) -> Tier:
        """``local`` (this device's model) or ``remote``."""

    async def generate(self, request: ChatRequest, on_chunk: OnChunk | None = None,
                       ) -> Completion:
        """Answer ``request``, calling ``on_chunk`` as text arrives.

        Raises :class:`GeneratorCrashed`, :class:`GeneratorUnavailable` or
        :class:`GenerationFailed`.
        """

    def cancel(self, request_id: str) -> None:
        """End a running generation with ``finish_reason: cancelled``."""

    def set_budget(self, tokens: int | None) -> None:
        """The live token budget for running and later generations (``None``: no cap)."""


class AnswerCap:
    """Cuts a remote answer at the budget a local one has: tokens, and bytes.

    A remote server may ignore ``max_tokens``: 200,000 chunks, or one chunk of
    60 MB. Each chunk counts as a token (a streaming server sends about one per
    chunk), and the text may not pass :data:`BYTES_PER_TOKEN` bytes per token of
    the budget, so that neither many small chunks nor one huge one gets through.
    ``limit`` is the request's own ``max_tokens``; ``budget()`` the live budget
    (heat), read on every chunk.
    """

    def __init__(self, limit: int | None, budget: Callable[[], int | None]) -> None:
        self.limit = limit if limit is not None else MAX_TOKENS
        self.budget = budget
        self.tokens = 0
        self.bytes = 0
        self.cut: FinishReason | None = None

    def take(self, delta: str) -> str:
        """The part of ``delta`` within the budget ('' once it is spent; :attr:`cut` says why)."""
        if self.cut is not None:
            return ""
        live = self.budget()
        tokens, why = (live, "throttled") if live is not None and live < self.limit \
            else (self.limit, "length")
        if self.tokens >= tokens:
            self.cut = why
            return ""
        room = tokens * BYTES_PER_TOKEN - self.bytes
        raw = delta.encode("utf-8", "replace")[:room]  # a lone surrogate becomes "?"
        if len(raw) == room:
            self.cut = why
        self.tokens += 1
        self.bytes += len(raw)
        if self.tokens >= tokens:
            self.cut = why
        return raw.decode("utf-8", "ignore")  # a character cut in two is dropped
