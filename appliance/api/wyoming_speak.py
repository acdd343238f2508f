"""Text to speech for one Wyoming connection: a whole text, or a stream of text chunks.

A whole ``synthesize`` is spoken sentence by sentence as one audio stream, its
first audio sent as soon as the first sentence is synthesized. Streamed
synthesis (``synthesize-start``/``-chunk``/``-stop``) speaks each sentence as
soon as its text is complete, while more text arrives, each as its own
``audio-start``/``-chunk``/``-stop``, all in the voice's one format (Home
Assistant takes the format from the first ``audio-start`` only), and ends with
``synthesize-stopped``. The compatibility ``synthesize`` inside such a stream
carries text already spoken, and is ignored.

Text is bounded: at most :data:`MAX_TEXT_CHARS` per ``synthesize`` and per
stream, and :data:`MAX_SENTENCE_BYTES` per sentence; beyond them the client
gets one ``error`` and is dropped.
Cutting into sentences is linear in the text, and long text is cut in a
thread, so no text holds up the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
)

from appliance.api.speech import Speech
from appliance.api.wyoming_events import BadEvent
from appliance.errors import ApplianceError
from appliance.logs import get_logger
from appliance.voice.pieces import SentenceSplitter, for_speech, sentences
from appliance.voice.tts import Audio

log = get_logger("wyoming")

SAMPLES_PER_CHUNK = 1024
MAX_TEXT_CHARS = 20_000
"""The most text one ``synthesize``, or one streamed synthesis, may carry (some 20 minutes)."""
MAX_SENTENCE_BYTES = 1 << 16
"""The longest sentence spoken, in UTF-8: espeak-ng takes it as one argument (Linux: < 128 KiB)."""
SPLIT_ON_LOOP_CHARS = 4096
"""Text up to this long is cut into sentences on the loop (microseconds); longer in a thread."""
Write = Callable[[Event], Awaitable[None]]
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]
SynthesisEvent = Synthesize | SynthesizeStart | SynthesizeChunk | SynthesizeStop


def _too_long(chars: int, what: str) -> BadEvent:
    return BadEvent(f"{what} of {chars} characters (at most {MAX_TEXT_CHARS})", "text-too-long")


def _spoken_pieces(text: str) -> list[str]:
    """A whole text's sentences, without markup (linear in the text)."""
    return [piece for sentence in sentences(text) if (piece := for_speech(sentence))]


class SynthesisSession:
    """Answers one connection's synthesis events through ``write``."""

    def __init__(self, speech: Speech, write: Write, spawn: Spawn, early_words: int,
                 peer: str) -> None:
        self.speech, self.write, self.spawn = speech, write, spawn
        self.early_words = early_words
        self.peer = peer
        self._stream: _Stream | None = None

    @property
    def busy(self) -> bool:
        """A streamed synthesis has text it has not spoken yet."""
        return self._stream is not None and self._stream.busy

    async def handle(self, message: SynthesisEvent) -> None:
        """One synthesis event; raises :class:`BadEvent` for a text over the limit."""
        if isinstance(message, SynthesizeStart):
            self.close()
            self._stream = _Stream(self)
        elif isinstance(message, SynthesizeChunk):
            if self._stream is not None:
                await self._stream.feed(message.text)
        elif isinstance(message, SynthesizeStop):
            stream, self._stream = self._stream, None
            if stream is not None:
                await stream.finish()
            await self.write(SynthesizeStopped().event())
        elif self._stream is None:  # inside a stream, this text came as chunks already
            await self._whole(message.text)

    def close(self) -> None:
        """The connection is gone, or a new stream starts: stop the one running."""
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    async def _whole(self, text: str) -> None:
        if len(text) > MAX_TEXT_CHARS:
            raise _too_long(len(text), "a synthesize text")
        pieces = (await asyncio.to_thread(_spoken_pieces, text)
                  if len(text) > SPLIT_ON_LOOP_CHARS else _spoken_pieces(text))
        started = False
        for piece in pieces:
            audio = await self.synthesize(piece)
            if audio is None:
                return
            if not started:
                await self.write(AudioStart(rate=audio.rate, width=2, channels=1).event())
                started = True
            await self.send(audio)
        if not started:  # nothing to say: an empty stream, in the voice's format
            await self.write(AudioStart(rate=self.speech.rate or 16000, width=2,
                                        channels=1).event())
        await self.write(AudioStop().event())

    async def synthesize(self, text: str) -> Audio | None:
        """``text`` as audio; a failure is an ``error`` event and ``None``.

        Raises :class:`BadEvent` for a sentence over :data:`MAX_SENTENCE_BYTES`.
        """
        size = len(text.encode())
        if size > MAX_SENTENCE_BYTES:
            raise BadEvent(f"a sentence of {size} bytes (at most {MAX_SENTENCE_BYTES})",
                           "text-too-long")
        try:
            return await self.speech.synthesize(text)
        except ApplianceError as exc:
            log.error("wyoming_tts_failed", error=str(exc), peer=self.peer)
            await self.write(Error(text=str(exc), code="tts-failed").event())
            return None

    async def send(self, audio: Audio) -> None:
        """``audio`` as ``audio-chunk`` events."""
        step = SAMPLES_PER_CHUNK * 2
        for i in range(0, len(audio.pcm), step):
            await self.write(AudioChunk(rate=audio.rate, width=2, channels=1,
                                        audio=audio.pcm[i: i + step]).event())


class _Stream:
    """One ``synthesize-start`` … ``-stop`` stream, synthesized in order by one task."""

    def __init__(self, session: SynthesisSession) -> None:
        self.session = session
        self._splitter = SentenceSplitter(session.early_words)
        self._chars = 0
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._speaking = False
        self._task = session.spawn(self._run())

    @property
    def busy(self) -> bool:
        return self._speaking or not self._queue.empty()

    async def feed(self, text: str) -> None:
        self._chars += len(text)
        if self._chars > MAX_TEXT_CHARS:
            raise _too_long(self._chars, "a streamed synthesis")
        if len(text) > SPLIT_ON_LOOP_CHARS:
            pieces = await asyncio.to_thread(list, self._splitter.feed(text))
        else:
            pieces = list(self._splitter.feed(text))
        for sentence in pieces:
            self._queue.put_nowait(sentence)

    async def finish(self) -> None:
        for sentence in self._splitter.flush():
            self._queue.put_nowait(sentence)
        self._queue.put_nowait(None)
        await self._task

    def cancel(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        session = self.session
        while (sentence := await self._queue.get()) is not None:
            self._speaking = True
            try:
                spoken = for_speech(sentence)
                audio = await session.synthesize(spoken) if spoken else None
                if audio is None:
                    continue
                await session.write(AudioStart(rate=audio.rate, width=2, channels=1).event())
                await session.send(audio)
                await session.write(AudioStop().event())
            finally:
                self._speaking = False
