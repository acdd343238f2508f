"""The one seam between the dispatcher and whatever writes answers: a :class:`Generator`.

The local model worker, an OpenAI-compatible server and another appliance over
MQTT all look the same to the dispatcher: they stream a completion, can be
cancelled, and take a live token budget. A fake generator is enough to test
the dispatcher's retry, preemption, thermal and cancel logic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from appliance.errors import ModelError
from appliance.llm.types import ChatRequest, Chunk, Completion

Tier = Literal["local", "remote"]
OnChunk = Callable[[Chunk], None]


class GenerationFailed(ModelError):
    """The generator refused or could not finish a request; the message says why."""


class GeneratorCrashed(GenerationFailed):
    """The generator died while the request ran; running it again may work."""


class GeneratorUnavailable(GenerationFailed):
    """The generator cannot take requests now (restarting, unreachable, circuit open)."""


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
