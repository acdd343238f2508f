"""Group streamed text into fewer, larger chunks.

Publishing every token costs a wake-up of every process on the path, and on a
board where llama.cpp uses every core that CPU comes straight out of the
generation. A :class:`ChunkBatcher` passes the first few pieces on at once
(the first token is what a display shows, the first words are what speech
waits for), then at most one chunk per interval, and always at the end of a
sentence, so speech can go on without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from appliance.llm.types import Chunk, OnChunk

SENTENCE_END = (".", "!", "?", "\n", "。", "！", "？")
EAGER_CHUNKS = 8
"""How many pieces at the start of an answer pass unbatched: enough for its first words."""


class ChunkBatcher:
    """Batches the chunks of one request; call :meth:`flush` when it is done."""

    def __init__(self, emit: OnChunk, interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.emit, self.interval_s, self.clock = emit, interval_s, clock
        self._parts: list[str] = []
        self._request_id = ""
        self._seq = 0
        self._last: float | None = None

    def add(self, chunk: Chunk) -> None:
        """Take one piece of text."""
        self._request_id = chunk.request_id
        self._parts.append(chunk.delta)
        now = self.clock()
        if (self._seq < EAGER_CHUNKS or now - self._last >= self.interval_s
                or chunk.delta.rstrip(" ").endswith(SENTENCE_END)):
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Emit whatever is pending as one chunk."""
        if not self._parts:
            return
        self.emit(Chunk(self._request_id, self._seq, "".join(self._parts)))
        self._parts.clear()
        self._seq += 1
        self._last = self.clock() if now is None else now
