"""From sampled tokens to answer text: UTF-8, stop strings, streaming chunks, confidence.

A :class:`Decoder` serves one generation. The text it hands to ``on_chunk``
joins up to exactly the answer's text: text that might be the start of a
stop string is held back until it is clear that it is not.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Callable

import llama_cpp
import numpy as np

from appliance.llm import native
from appliance.llm.batching import SENTENCE_END
from appliance.llm.types import ChatRequest, Chunk, FinishReason, OnChunk


class Decoder:
    """Turns the tokens of one answer into text, chunk by chunk.

    ``logits`` gives the logits that sampled the token just handed to
    :meth:`add` (:meth:`appliance.llm.decode_loop.Generation.logits`), for
    the confidence of the first tokens.
    """

    def __init__(self, llm: llama_cpp.Llama | None, request: ChatRequest,
                 on_chunk: OnChunk | None,
                 logits: Callable[[], np.ndarray] | None) -> None:
        self._llm = llm
        self._logits = logits
        self._vocab = native.vocab(llm) if llm else None
        self._request_id = request.id
        self._on_chunk = on_chunk
        self._stops = tuple(s for s in request.stop if s)
        self._watch = request.confidence
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tokens: list[int] = []
        self._parts: list[str] = []
        self._pending = ""
        self._logprobs: list[float] = []
        self.low_confidence = False

    @classmethod
    def empty(cls) -> Decoder:
        """A decoder that saw no token (for answers that never started)."""
        return cls(None, ChatRequest(""), None, None)

    @property
    def count(self) -> int:
        """Tokens taken so far."""
        return len(self._tokens)

    @property
    def text(self) -> str:
        """The answer so far, without surrounding blanks."""
        return "".join(self._parts).strip()

    @property
    def at_sentence_end(self) -> bool:
        """Whether the text given out so far ends a sentence."""
        return bool(self._parts) and self._parts[-1].rstrip(" ").endswith(SENTENCE_END)

    @property
    def confidence(self) -> float | None:
        """Mean log-probability of the watched first tokens, if they were watched."""
        return sum(self._logprobs) / len(self._logprobs) if self._logprobs else None

    def add(self, token: int) -> FinishReason | None:
        """Take the next sampled token; a finish reason when the answer ends here."""
        assert self._llm is not None
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            return "stop"
        if self._watch is not None and len(self._logprobs) < self._watch.tokens:
            self._logprobs.append(self._logprob(token))
            if len(self._logprobs) == self._watch.tokens and self.confidence is not None \
                    and self.confidence < self._watch.below:
                self.low_confidence = True
                return "cancelled"
        piece = self._utf8.decode(self._llm.detokenize([token], prev_tokens=self._tokens))
        self._tokens.append(token)
        return self._take(piece)

    def finish(self) -> None:
        """The answer is over: give out what was held back."""
        self._take(self._utf8.decode(b"", final=True))
        self._emit(self._pending)
        self._pending = ""

    def _take(self, piece: str) -> FinishReason | None:
        if not self._stops:
            self._emit(piece)
            return None
        self._pending += piece
        found = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if found:
            self._emit(self._pending[: min(found)])
            self._pending = ""
            return "stop"
        hold = max((n for s in self._stops for n in range(1, len(s))
                    if self._pending.endswith(s[:n])), default=0)
        self._emit(self._pending[: len(self._pending) - hold])
        self._pending = self._pending[len(self._pending) - hold:]
        return None

    def _emit(self, text: str) -> None:
        if not text:
            return
        if self._on_chunk is not None:
            self._on_chunk(Chunk(self._request_id, len(self._parts), text))
        self._parts.append(text)

    def _logprob(self, token: int) -> float:
        """Log P(token) from the logits that sampled it: one pass over the vocabulary."""
        assert self._logits is not None
        logits = self._logits()
        top = float(logits.max())
        return float(logits[token]) - top - math.log(float(np.exp(logits - top).sum()))
