"""Speech for the Wyoming server: our vosk model and our voice, shared by every connection.

The vosk model (``voice.model_path``) is loaded once, in a thread, while the
server already answers ``describe``; each audio stream gets its own
:class:`Transcription` (a recognizer and a converter, since both keep state).
Its recognizer is made when its first audio has been converted: with a full
language model that takes about 80 ms of CPU, which a stream that never sends
any (or sends only what cannot be converted) does not cost.
At most :data:`MAX_TRANSCRIPTIONS` streams are recognized at once, on a pool of
as many threads, each with a bounded backlog of audio. The synthesizer
(``voice.tts``) is loaded before the server listens, so that ``info`` can say
at once at what rate it speaks. Every vosk and TTS call runs
in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import vosk
from wyoming.audio import AudioChunk, AudioChunkConverter

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.logs import get_logger
from appliance.voice.audio import RATE
from appliance.voice.recognizer import Recognizer, load_model
from appliance.voice.tts import Audio, SpeechError, Synthesizer, load_synthesizer, voice_name

log = get_logger("wyoming")

_ALIASES = {"cn": "zh", "ua": "uk", "jp": "ja", "kz": "kk"}  # vosk's model names use these
_SIZES = {"small", "big", "large", "lgraph", "model", "vosk", "piper"}
_TOKEN = re.compile(r"[A-Za-z]{2,3}")


def language_of(name: str) -> str | None:
    """The language a model or voice name says (``vosk-model-small-en-us-0.15``: ``en-US``)."""
    tokens = [t for t in re.split(r"[-_.]", name.lower()) if t and t not in _SIZES]
    for i, token in enumerate(tokens):
        if _TOKEN.fullmatch(token):
            language = _ALIASES.get(token, token)
            region = tokens[i + 1] if i + 1 < len(tokens) else ""
            return f"{language}-{region.upper()}" if re.fullmatch(r"[a-z]{2}", region) \
                else language
    return None


def model_language(path: Path) -> str | None:
    """The language of a vosk model directory, from its name or its parent's."""
    for part in reversed(path.parts):
        if part.lower().startswith(("vosk-model", "vosk_model")):
            return language_of(part)
    return None


MAX_TRANSCRIPTIONS = 3
"""Audio streams recognized at once (vosk takes one core each; the model needs the rest)."""
SLOT_WAIT_S = 5.0
"""How long a new stream waits for one of them before it is refused as busy."""
MAX_QUEUED_BYTES = 1 << 20
"""Audio a stream may have waiting for vosk; the stream is read no further beyond it."""
_CONVERTED_BYTES_PER_S = RATE * 2


class Busy(ApplianceError):
    """Every transcription slot stayed taken for :data:`SLOT_WAIT_S`."""


def _cost(chunk: AudioChunk) -> int:
    """What ``chunk`` holds while it waits: its own bytes or its converted ones, the more."""
    return max(len(chunk.audio), int(chunk.seconds * _CONVERTED_BYTES_PER_S))


class Transcription:
    """One audio stream of any rate, width and channel count, turned into text.

    Chunks are recognized in batches, one batch at a time on the shared
    pool's threads, while the event loop reads on: a client that sends faster
    than real time costs one vosk call per batch, not per chunk. At most
    :data:`MAX_QUEUED_BYTES` wait; beyond that :meth:`feed` waits for vosk,
    and the client's socket fills (TCP's own backpressure). Its slot is
    given back when it is closed and vosk is done with it.
    """

    def __init__(self, new_recognizer: Callable[[], Recognizer], pool: ThreadPoolExecutor,
                 release: Callable[[], None]) -> None:
        self._new_recognizer = new_recognizer
        self._recognizer: Recognizer | None = None  # made with the first audio
        self._converter = AudioChunkConverter(rate=RATE, width=2, channels=1)
        self._pool = pool
        self._release: Callable[[], None] | None = release
        self._texts: list[str] = []
        self._waiting: list[AudioChunk] = []
        self._queued = 0
        self._running: asyncio.Future[None] | None = None
        self._changed = asyncio.Event()
        self._failed: BaseException | None = None
        self._closed = False
        self.seconds = 0.0

    async def feed(self, chunk: AudioChunk) -> None:
        """Queue one chunk; waits while too much audio waits for vosk."""
        self.seconds += chunk.seconds
        self._waiting.append(chunk)
        self._queued += _cost(chunk)
        self._next_batch()
        while self._queued > MAX_QUEUED_BYTES and self._running is not None:
            self._changed.clear()
            await self._changed.wait()

    async def finish(self) -> str:
        """Everything that was said, once every queued chunk is recognized."""
        try:
            while (self._running is not None or self._waiting) and self._failed is None:
                self._next_batch()
                self._changed.clear()
                await self._changed.wait()
            if self._failed is not None:
                raise self._failed
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self._last_words)
        finally:
            self.close()

    def close(self) -> None:
        """Drop what is still queued (the client went away); the slot goes back."""
        self._closed = True
        self._waiting = []
        if self._running is None:
            self._give_back()

    def _next_batch(self) -> None:
        if self._running is not None or not self._waiting or self._closed or self._failed:
            return
        batch, self._waiting = self._waiting, []
        running = asyncio.get_running_loop().run_in_executor(self._pool, self._recognize, batch)
        running.add_done_callback(partial(self._ran, sum(map(_cost, batch))))
        self._running = running

    def _recognize(self, batch: list[AudioChunk]) -> None:
        pcm = b"".join(self._converter.convert(chunk).audio for chunk in batch)
        if not pcm:
            return
        if self._recognizer is None:
            self._recognizer = self._new_recognizer()
        self._texts += [h.text for h in self._recognizer.feed(pcm) if h.final]

    def _ran(self, cost: int, done: asyncio.Future[None]) -> None:
        self._running = None
        self._queued -= cost
        if not done.cancelled() and done.exception() is not None and self._failed is None:
            self._failed = done.exception()
        self._changed.set()
        if self._closed:
            self._give_back()
        else:
            self._next_batch()

    def _last_words(self) -> str:
        if self._recognizer is not None:
            self._texts += [h.text for h in self._recognizer.finish() if h.final]
        return " ".join(self._texts)

    def _give_back(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


class Speech:
    """The speech parts the Wyoming server offers (``asr``, ``tts``), loaded once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        voice = settings.voice
        self.model_path = voice.model_path
        self.asr_language: str | None = None
        if self.model_path is not None:
            self.asr_language = model_language(self.model_path)
            if self.asr_language is None:
                log.warning("speech_language_unknown", model=str(self.model_path),
                            assumed="en")
                self.asr_language = "en"
        self.voice = voice_name(voice) if voice.tts != "none" else None
        self.tts_language = (language_of(self.voice.removesuffix(".onnx").rsplit("/", 1)[-1])
                             if self.voice else None) or self.asr_language or "en"
        self.asr_error: str | None = None
        self.tts_error: str | None = None
        self.rate = 0
        self._model: asyncio.Task[vosk.Model] | None = None
        self._synthesizer: Synthesizer | None = None
        self._slots = asyncio.Semaphore(MAX_TRANSCRIPTIONS)
        self._asr_pool = ThreadPoolExecutor(MAX_TRANSCRIPTIONS, thread_name_prefix="wyoming-asr")

    @property
    def has_asr(self) -> bool:
        """Speech to text is configured and has not failed to load."""
        return self.model_path is not None and self.asr_error is None

    @property
    def has_tts(self) -> bool:
        """Text to speech is configured and loaded."""
        return self._synthesizer is not None

    async def start(self) -> None:
        """Load the synthesizer (and learn its rate) now, the vosk model in the background."""
        if self.model_path is not None:
            self._model = asyncio.create_task(asyncio.to_thread(load_model, self.model_path),
                                              name="load vosk model")
            self._model.add_done_callback(self._model_loaded)
        if self.voice is not None:
            try:
                synthesizer = await asyncio.to_thread(load_synthesizer, self.settings)
                self.rate = (await asyncio.to_thread(synthesizer.synthesize, "ok")).rate
                self._synthesizer = synthesizer
            except ApplianceError as exc:
                self.tts_error = str(exc)
                log.error("wyoming_tts_unavailable", error=self.tts_error)

    def _model_loaded(self, task: asyncio.Task[vosk.Model]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            self.asr_error = str(task.exception())
            log.error("wyoming_asr_unavailable", error=self.asr_error)
        else:
            log.info("wyoming_asr_ready", model=str(self.model_path))

    async def transcription(self) -> Transcription:
        """A new stream's transcription, in one of :data:`MAX_TRANSCRIPTIONS` slots.

        Raises :class:`ApplianceError` without a model, :class:`Busy` when no
        slot comes free within :data:`SLOT_WAIT_S`.
        """
        if self._model is None:
            raise SpeechError("speech to text is not configured (voice.model_path)")
        model = await self._model
        try:
            async with asyncio.timeout(SLOT_WAIT_S):
                await self._slots.acquire()
        except TimeoutError:
            raise Busy(f"speech to text is busy: {MAX_TRANSCRIPTIONS} streams are being "
                       "transcribed; try again") from None
        return Transcription(partial(Recognizer.for_voice, model, self.settings.voice),
                             self._asr_pool, self._slots.release)

    async def synthesize(self, text: str) -> Audio:
        """``text`` as speech (in a thread); raises :class:`SpeechError`."""
        if self._synthesizer is None:
            raise SpeechError(self.tts_error or "text to speech is not configured (voice.tts)")
        return await asyncio.to_thread(self._synthesizer.synthesize, text)

    async def close(self) -> None:
        """Stop a model load that is still running (its thread ends on its own)."""
        if self._model is not None and not self._model.done():
            self._model.cancel()
        self._asr_pool.shutdown(wait=False, cancel_futures=True)
