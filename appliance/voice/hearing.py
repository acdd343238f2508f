"""What vosk hears of an audio stream: all of it, or only once a wake word has called us.

Without a wake word engine every chunk goes to the recognizer, as it always
did. With one (``voice.wake.engine: micro``), the wake word model hears every
chunk and vosk hears nothing until it is *open*: from the wake word until the
end of the next utterance (or ``wake_window_s`` of audio without one), while
somebody holds it open (the talk button, our own speech, so that a spoken
``stop`` still barges in), and until the end of an utterance that is under
way when the last of those lets go. Audio time, not the wall clock, measures
the window, so a file gives the same results however fast it is read.

The stream's own clock dates what is heard: a chunk cannot be read before it
was recorded, so the earliest ``read time - position`` seen is when the
stream began, and a position's sound reached the microphone that long after.
A recognizer that falls behind therefore never makes old sound look new.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import vosk

from appliance.config.schema import VoiceSettings
from appliance.voice.audio import RATE
from appliance.voice.recognizer import Heard, Recognizer
from appliance.voice.wake import WakeWord


def uses_wake_word(voice: VoiceSettings) -> bool:
    """Whether a wake word engine, not vosk, hears when we are called."""
    return voice.activation == "wake" and voice.wake.engine == "micro"


@dataclass(frozen=True)
class Woke:
    """The wake word ``phrase`` ended ``at_s`` seconds into the audio stream."""

    phrase: str
    at_s: float


class Opening:
    """Who wants vosk to listen now; safe to call from any thread.

    :meth:`hold` keeps it open for a reason (``"button"``, ``"speaking"``)
    until released; :meth:`open_for` opens it for some seconds of audio, or
    until the end of the utterance heard in them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._window: float | None = None

    def hold(self, reason: str, on: bool) -> None:
        """Keep vosk listening for ``reason`` (``on``), or stop doing so."""
        with self._lock:
            if on:
                self._held.add(reason)
            else:
                self._held.discard(reason)

    def open_for(self, seconds: float) -> None:
        """Let vosk listen for ``seconds`` of audio from now, or to the end of an utterance."""
        with self._lock:
            self._window = max(self._window or 0.0, seconds)

    @property
    def held(self) -> bool:
        """Some reason holds it open."""
        with self._lock:
            return bool(self._held)

    def take_window(self) -> float | None:
        """The seconds asked for by :meth:`open_for` since the last call, if any."""
        with self._lock:
            window, self._window = self._window, None
            return window


class Hearing:
    """Feeds one stream's chunks to the wake word model and, when open, to vosk.

    ``wake`` ``None``: vosk hears everything. Yields :class:`Woke` when the
    wake word ends and :class:`~appliance.voice.recognizer.Heard` results.
    """

    def __init__(self, recognizer: Recognizer, wake: WakeWord | None = None,
                 window_s: float = 8.0, opening: Opening | None = None) -> None:
        self.recognizer, self.wake, self.window_s = recognizer, wake, window_s
        self.opening = opening or Opening()
        self.at_s = 0.0  # audio fed so far
        self._began = float("inf")  # when the stream began (time.monotonic())
        self._until = float("-inf")  # the wake window, in audio seconds
        self._listening = wake is None

    @classmethod
    def for_voice(cls, model: vosk.Model, voice: VoiceSettings,
                  opening: Opening | None = None) -> Hearing:
        """The recognizer of ``voice``, and its wake word model if it uses one."""
        wake = WakeWord(voice.wake) if uses_wake_word(voice) else None
        return cls(Recognizer.for_voice(model, voice), wake, voice.wake_window_s, opening)

    def feed(self, chunk: bytes) -> Iterator[Heard | Woke]:
        """Hear one chunk of 16 kHz 16-bit mono PCM, just read from a live stream or a file."""
        self.at_s += len(chunk) / (RATE * 2)
        self._began = min(self._began, time.monotonic() - self.at_s)
        if self.wake is None:
            yield from self._dated(self.recognizer.feed(chunk))
            return
        if self.wake.feed(chunk):
            self._until = self.at_s + self.window_s
            yield Woke(self.wake.phrase, round(self.at_s, 2))
        window = self.opening.take_window()
        if window is not None:
            self._until = max(self._until, self.at_s + window)
        recognizer = self.recognizer
        if not (self.opening.held or self.at_s <= self._until or recognizer.in_utterance):
            if self._listening:  # it just closed: what vosk had is one last result
                self._listening = False
                yield from self._dated(recognizer.finish())
            recognizer.skip(chunk)
            return
        self._listening = True
        for heard in self._dated(recognizer.feed(chunk)):
            if heard.final:
                self._until = float("-inf")  # the utterance the window was for has ended
            yield heard

    def finish(self) -> Iterator[Heard]:
        """The end of the stream: what vosk still had."""
        if self._listening:
            yield from self._dated(self.recognizer.finish())

    def _dated(self, results: Iterator[Heard]) -> Iterator[Heard]:
        """Each result with ``speech_at``, from the stream's clock."""
        for heard in results:
            if heard.speech_start_s is not None:
                heard = replace(heard, speech_at=self._began + heard.speech_start_s)
            yield heard
