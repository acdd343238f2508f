"""Speech for the Wyoming server: our vosk model and our voice, shared by every connection.

The vosk model (``voice.model_path``) is loaded once, in a thread, while the
server already answers ``describe``; each audio stream gets its own
:class:`Transcription` (a recognizer and a converter, since both keep state, and its own thread).
The synthesizer (``voice.tts``) is loaded before the server listens, so that
``info`` can say at once at what rate it speaks. Every vosk and TTS call runs
in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
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


class Transcription:
    """One audio stream of any rate, width and channel count, turned into text.

    The stream's own thread recognizes while the event loop reads on; chunks
    that arrive meanwhile are recognized together, so a client that sends
    faster than real time costs one vosk call per batch, not per chunk.
    """

    def __init__(self, recognizer: Recognizer) -> None:
        self._recognizer = recognizer
        self._converter = AudioChunkConverter(rate=RATE, width=2, channels=1)
        self._texts: list[str] = []
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wyoming-asr")
        self._lock = threading.Lock()
        self._waiting: list[AudioChunk] = []
        self._busy = False
        self._failed: BaseException | None = None
        self.seconds = 0.0

    def feed(self, chunk: AudioChunk) -> None:
        """Queue one chunk for recognition (returns at once)."""
        self.seconds += chunk.seconds
        with self._lock:
            self._waiting.append(chunk)
            if self._busy:
                return
            self._busy = True
        self._thread.submit(self._drain).add_done_callback(self._check)

    def _drain(self) -> None:
        while True:
            with self._lock:
                chunks, self._waiting = self._waiting, []
                if not chunks:
                    self._busy = False
                    return
            pcm = b"".join(self._converter.convert(chunk).audio for chunk in chunks)
            self._texts += [h.text for h in self._recognizer.feed(pcm) if h.final]

    def _check(self, done: Future[None]) -> None:
        if not done.cancelled() and done.exception() is not None and self._failed is None:
            self._failed = done.exception()

    async def finish(self) -> str:
        """Everything that was said, once every queued chunk is recognized."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, self._finish)
        finally:
            self.close()

    def _finish(self) -> str:
        self._drain()
        if self._failed is not None:
            raise self._failed
        self._texts += [h.text for h in self._recognizer.finish() if h.final]
        return " ".join(self._texts)

    def close(self) -> None:
        """Drop what is still queued (the client went away)."""
        self._thread.shutdown(wait=False, cancel_futures=True)


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
        if not task.cancelled() and task.exception() is not None:
            self.asr_error = str(task.exception())
            log.error("wyoming_asr_unavailable", error=self.asr_error)

    async def transcription(self) -> Transcription:
        """A new stream's transcription; raises :class:`ApplianceError` without a model."""
        if self._model is None:
            raise SpeechError("speech to text is not configured (voice.model_path)")
        model = await self._model
        recognizer = await asyncio.to_thread(Recognizer.for_voice, model, self.settings.voice)
        return Transcription(recognizer)

    async def synthesize(self, text: str) -> Audio:
        """``text`` as speech (in a thread); raises :class:`SpeechError`."""
        if self._synthesizer is None:
            raise SpeechError(self.tts_error or "text to speech is not configured (voice.tts)")
        return await asyncio.to_thread(self._synthesizer.synthesize, text)

    async def close(self) -> None:
        """Stop a model load that is still running (its thread ends on its own)."""
        if self._model is not None and not self._model.done():
            self._model.cancel()
