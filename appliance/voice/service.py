"""Voice in ``appliance run``: recognition on its own thread, speech out on another.

:class:`VoiceInput` reads the configured source (microphone, stdin or a WAV
file), recognizes it with vosk and hands every result to the loop.
:class:`Speaker` speaks answers sentence by sentence as they stream in, and
stops at once on barge-in.
"""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from appliance.config.schema import VoiceSettings
from appliance.errors import ApplianceError
from appliance.logs import get_logger
from appliance.voice.audio import RATE, mic_chunks, stream_chunks, wav_chunks
from appliance.voice.kid_safe import KidFilter
from appliance.voice.recognizer import Heard, Recognizer, load_model
from appliance.voice.speech_out import SentenceSplitter, espeak_command

log = get_logger("voice")


def source_name(settings: VoiceSettings) -> str:
    """``mic``, ``stdin`` or ``wav``, as published in ``<base>/heard``."""
    return settings.source if settings.source in ("mic", "stdin") else "wav"


def _real_time(chunks: Iterator[bytes], stop: threading.Event) -> Iterator[bytes]:
    """Pace a file like a microphone would deliver it (a WAV source stands in for one)."""
    for chunk in chunks:
        yield chunk
        if stop.wait(len(chunk) / (RATE * 2)):
            return


class VoiceInput:
    """Recognition on a thread; ``on_heard`` and ``on_error`` run on the loop."""

    def __init__(self, settings: VoiceSettings, loop: asyncio.AbstractEventLoop,
                 on_heard: Callable[[Heard], None], on_error: Callable[[str], None]) -> None:
        self.settings, self.loop = settings, loop
        self.on_heard, self.on_error = on_heard, on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="voice-in", daemon=True)

    def start(self) -> None:
        """Start listening."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current chunk."""
        self._stop.set()

    def _chunks(self) -> Iterator[bytes]:
        source = self.settings.source
        if source == "mic":
            return mic_chunks(self.settings.device)
        if source == "stdin":
            return stream_chunks(sys.stdin.buffer)
        return _real_time(wav_chunks(Path(source)), self._stop)

    def _run(self) -> None:
        try:
            recognizer = Recognizer(load_model(self.settings.model_path), self.settings.grammar,
                                    self.settings.max_utterance_s)
            for chunk in self._chunks():
                if self._stop.is_set():
                    return
                for heard in recognizer.feed(chunk):
                    self.loop.call_soon_threadsafe(self.on_heard, heard)
            for heard in recognizer.finish():
                self.loop.call_soon_threadsafe(self.on_heard, heard)
            log.info("voice_source_ended", source=self.settings.source)
        except ApplianceError as exc:
            self.loop.call_soon_threadsafe(self.on_error, str(exc))


class Speaker:
    """Speaks streamed answers with espeak-ng, one sentence at a time, on its own thread.

    ``on_speaking(True)`` runs (on that thread) when speech starts, ``(False)``
    when the queue has run dry.
    """

    def __init__(self, settings: VoiceSettings,
                 on_speaking: Callable[[bool], None] = lambda _speaking: None) -> None:
        self.settings = settings
        self.on_speaking = on_speaking
        self.kid = KidFilter(settings.block_list) if settings.kid_safe else None
        self.last_answer = ""
        self._splitters: dict[str, SentenceSplitter] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._current: subprocess.Popen[bytes] | None = None
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="speaker", daemon=True)
        self._thread.start()

    def feed(self, request_id: str, delta: str) -> None:
        """Streamed answer text; whole sentences are queued for speech at once."""
        splitter = self._splitters.setdefault(request_id, SentenceSplitter())
        for sentence in splitter.feed(delta):
            self.say(sentence)

    def finish(self, request_id: str) -> None:
        """The answer is complete: speak what is left."""
        splitter = self._splitters.pop(request_id, None)
        if splitter is not None:
            for sentence in splitter.flush():
                self.say(sentence)

    def say(self, sentence: str) -> None:
        """Queue one sentence (filtered in toy mode)."""
        sentence = self.kid.sentence(sentence) if self.kid else sentence
        self.last_answer = sentence
        self._queue.put(sentence)

    def stop(self) -> None:
        """Barge-in: drop what is queued and cut the sentence being spoken."""
        self._splitters.clear()
        while not self._queue.empty():
            self._queue.get_nowait()
        if self._current is not None and self._current.poll() is None:
            self._current.kill()

    def close(self) -> None:
        """Stop the speaking thread."""
        self.stop()
        self._queue.put(None)

    def _run(self) -> None:
        while (sentence := self._queue.get()) is not None:
            self.on_speaking(True)
            try:
                self._current = subprocess.Popen(
                    espeak_command(sentence, self.settings.tts_voice),
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                _, err = self._current.communicate()
                if self._current.returncode > 0 and not self._failed:
                    log.warning("speech_failed", error=err.decode(errors="replace").strip())
                    self._failed = True
            except ApplianceError as exc:
                if not self._failed:
                    log.warning("speech_failed", error=str(exc))
                self._failed = True
            if self._queue.empty():
                self.on_speaking(False)
