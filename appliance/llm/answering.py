"""One answer being generated: its tokens go to the thought or the decoder, within its limits.

An :class:`Answering` takes the tokens its :class:`~appliance.llm.decode_loop.Generation`
samples and decides, at every token, whether the answer goes on: the decoder may
end it (an end-of-generation token, a stop string, low confidence), a cancel may
stop it, the live budget (heat) may cut it at a sentence end, and it may run out
of tokens or of context. It does not decode: the engine drives it alone
(:meth:`run_alone`), or a :class:`~appliance.llm.lanes.Lanes` steps it beside
others and hands it what was sampled (:meth:`take_ready`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.llm.decode_loop import Generation
from appliance.llm.decoding import Decoder
from appliance.llm.thought import Thought
from appliance.llm.types import ChatRequest, FinishReason

Budget = Callable[[], int]


@dataclass(frozen=True)
class Limits:
    """What bounds an answer: the request's tokens (``limit``), and what fits (``allowed``).

    ``room`` is the context left after the prompt; ``budget`` the live token
    budget (heat), read at every token; ``cancel`` set from any thread stops it.
    """

    limit: int
    allowed: int
    room: int
    budget: Budget | None = None
    cancel: threading.Event | None = None


@dataclass(frozen=True)
class PromptRead:
    """How the prompt was read.

    Under ``variant`` (the LoRA adapter), ``tokens`` long, ``cached`` of them
    restored from a saved state, ``evaluated`` read by the model for this answer.
    """

    variant: str
    tokens: int
    cached: int
    evaluated: int


class Answering:
    """The answer to ``request`` as it is generated; ``finish`` once it has ended."""

    def __init__(self, request: ChatRequest, generation: Generation, decoder: Decoder,
                 thought: Thought, limits: Limits, started: float, prompt: PromptRead) -> None:
        self.request = request
        self.prompt = prompt
        self.generation = generation
        self.decoder = decoder
        self.thought = thought
        self.limits = limits
        self.started = started
        self.first_at: float | None = None
        self.finish: FinishReason | None = None

    def run_alone(self, between: Callable[[], None]) -> None:
        """Decode on our own until the answer ends; ``between`` runs between two tokens."""
        for token in self.generation:
            if self._take(token):
                return
            between()
        self._end("length")

    def start(self) -> bool:
        """Sample and take the first token on our own; ``True`` if the answer ended there."""
        return self._take(next(self.generation))

    def poll(self) -> bool:
        """While waiting for its turn: end here if cancelled; ``True`` once ended."""
        cancel = self.limits.cancel
        if self.finish is None and cancel is not None and cancel.is_set():
            self._end("cancelled")
        return self.finish is not None

    def take_ready(self) -> bool:
        """Take every token sampled so far; ``True`` once the answer has ended."""
        while self.finish is None and self.generation.pending:
            self._take(next(self.generation))
        return self.finish is not None

    def _take(self, token: int) -> bool:
        """One sampled token; ``True`` (and :attr:`finish` set) when the answer ends here."""
        thinking = self.thought.take(token)  # a thought's token never reaches the decoder
        if self.first_at is None and not thinking:
            self.first_at = time.monotonic()
        ended = None if thinking else self.decoder.add(token)
        if ended is not None:
            return self._end(ended)
        limits, decoder = self.limits, self.decoder
        if limits.cancel is not None and limits.cancel.is_set():
            return self._end("cancelled")
        live = limits.budget() if limits.budget is not None else limits.limit
        if live < limits.allowed and (decoder.count >= live or (
                decoder.count >= 0.6 * live and decoder.at_sentence_end)):
            return self._end("throttled")
        if decoder.count >= min(limits.allowed, limits.room - self.thought.used):
            return self._end("length")
        return False

    def _end(self, finish: FinishReason) -> bool:
        self.finish = finish
        self.decoder.finish()
        return True
