"""Voice in ``appliance run``: recognition on its own thread, speech out on another.

:class:`VoiceInput` reads the configured source (microphone, stdin or a WAV
file), listens for the wake word when a wake word engine is configured,
recognizes what :class:`~appliance.voice.hearing.Hearing` lets vosk hear, and
hands every result to the loop.
:class:`Loudspeaker` speaks answers piece by piece as they stream in, stops at
once on barge-in, and starts one answer over when its generation restarts.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from appliance.config.convert import positive_number
from appliance.config.schema import Settings, VoiceSettings
from appliance.errors import ApplianceError
from appliance.logs import get_logger
from appliance.voice.audio import WAV_SPEED_ENV, mic_chunks, paced, stream_chunks, wav_chunks
from appliance.voice.hearing import Hearing, Opening, Woke
from appliance.voice.pieces import SpokenAnswer
from appliance.voice.playback import Playback
from appliance.voice.recognizer import Heard, load_model
from appliance.voice.tts import Audio, Synthesizer, load_synthesizer

log = get_logger("voice")

T = TypeVar("T")

def wav_source(path: Path, stop: threading.Event) -> Iterator[bytes]:
    """A WAV standing in for a microphone (:data:`WAV_SPEED_ENV` times faster, in tests)."""
    return paced(wav_chunks(path), stop, positive_number(os.environ.get(WAV_SPEED_ENV, "")) or 1.0)


def source_name(settings: VoiceSettings) -> str:
    """``mic``, ``stdin`` or ``wav``, as published in ``<base>/heard``."""
    return settings.source if settings.source in ("mic", "stdin") else "wav"


class VoiceInput:
    """Recognition on a thread; ``on_heard``, ``on_wake`` and ``on_error`` run on the loop.

    :attr:`opening` lets the controller keep vosk listening (with a wake word
    engine, it otherwise hears only what follows the wake word).
    """

    def __init__(self, settings: VoiceSettings, loop: asyncio.AbstractEventLoop,
                 on_heard: Callable[[Heard], None], on_error: Callable[[str], None],
                 on_wake: Callable[[Woke], None] = lambda _woke: None) -> None:
        self.settings, self.loop = settings, loop
        self.on_heard, self.on_error, self.on_wake = on_heard, on_error, on_wake
        self.opening = Opening()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="voice-in", daemon=True)
        self._ended = False

    def start(self) -> None:
        """Start listening."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Listening, or ended for a reason already reported (the source ended, no mic)."""
        return self._ended or self._thread.is_alive()

    @property
    def ended(self) -> bool:
        """The source ended (or failed), and every result has been handed to the loop."""
        return self._ended

    def stop(self) -> None:
        """Stop after the current chunk."""
        self._stop.set()

    def _chunks(self) -> Iterator[bytes]:
        source = self.settings.source
        if source == "mic":
            return mic_chunks(self.settings.device)
        if source == "stdin":
            return stream_chunks(sys.stdin.buffer)
        return wav_source(Path(source), self._stop)

    def _run(self) -> None:
        try:
            hearing = Hearing.for_voice(load_model(self.settings.model_path), self.settings,
                                        self.opening)
            if hearing.wake is not None:
                log.info("wake_word_ready", phrase=hearing.wake.phrase,
                         threshold=hearing.wake.threshold)
            for chunk in self._chunks():
                if self._stop.is_set():
                    return
                for event in hearing.feed(chunk):
                    if isinstance(event, Woke):
                        log.info("wake_word", phrase=event.phrase, at_s=event.at_s)
                        self._post(self.on_wake, event)
                    else:
                        self._post(self.on_heard, event)
            for heard in hearing.finish():
                self._post(self.on_heard, heard)
            log.info("voice_source_ended", source=self.settings.source)
            self._ended = True
        except ApplianceError as exc:
            self._ended = True
            self._post(self.on_error, str(exc))

    def _post(self, handler: Callable[[T], None], value: T) -> None:
        """Run ``handler(value)`` on the loop, unless it has already shut down."""
        try:
            self.loop.call_soon_threadsafe(handler, value)
        except RuntimeError:  # the loop is closed: the service stopped while we heard
            self._stop.set()


@dataclass(eq=False)
class _Take:
    """One attempt at speaking one request's answer; its pieces carry it through the queues.

    It is void once :meth:`Loudspeaker.stop` (``epoch`` is old) or
    :meth:`Loudspeaker.restart` (``void``) has dropped it.
    """

    request_id: str
    epoch: int
    answer: SpokenAnswer
    void: bool = field(default=False)


class Loudspeaker:
    """Speaks answers while they are still being generated, on two threads.

    The ``tts`` thread synthesizes pieces in order; the ``audio-out`` thread
    plays them through one stream per answer, so the next piece is being
    synthesized while the current one plays. ``on_speaking(True)`` runs when
    sound starts and ``(False)`` when the answer has played out or was cut;
    ``on_error`` gets one line, once, when speech cannot work (answers still
    go out on MQTT). Callbacks run on those threads.

    Every piece carries its :class:`_Take`: :meth:`stop` drops every take,
    :meth:`restart` only one request's, and neither thread synthesizes or plays
    a piece of a dropped take.
    """

    def __init__(self, settings: Settings,
                 on_speaking: Callable[[bool], None] = lambda _speaking: None,
                 on_error: Callable[[str], None] = lambda _message: None) -> None:
        voice = settings.voice
        self.settings = settings
        self.on_speaking, self.on_error = on_speaking, on_error
        self.last_answer = ""
        self._takes: dict[str, _Take] = {}  # the answers being fed, by request id
        self._texts: queue.Queue[tuple[_Take, str | None] | None] = queue.Queue()
        self._sounds: queue.Queue[tuple[_Take, Audio | None] | None] = queue.Queue()
        self._playback = Playback(voice.output_device, voice.volume)
        self._epoch = 0  # raised by stop(): whatever was queued before is dropped
        self._playing: _Take | None = None  # whose sound the open stream plays
        self._lock = threading.Lock()
        self._speaking = False
        self._failed = False
        self._threads = [threading.Thread(target=self._synthesize, name="tts", daemon=True),
                         threading.Thread(target=self._play, name="audio-out", daemon=True)]
        for thread in self._threads:
            thread.start()

    def feed(self, request_id: str, delta: str) -> None:
        """Streamed answer text; each completed piece is queued for speech at once."""
        take = self._takes.get(request_id)
        if take is None:
            take = self._takes[request_id] = _Take(request_id, self._epoch,
                                                   SpokenAnswer(self.settings.voice))
        for piece in take.answer.feed(delta):
            self._texts.put((take, piece))

    def finish(self, request_id: str) -> None:
        """The answer is complete: speak what is left, then close its stream."""
        take = self._takes.pop(request_id, None)
        if take is None:
            return
        for piece in take.answer.flush():
            self._texts.put((take, piece))
        self.last_answer = take.answer.text
        self._texts.put((take, None))

    def restart(self, request_id: str) -> None:
        """The answer's generation starts over: drop what was queued and cut what plays of it.

        The text fed from now on is spoken from its start, as a new answer;
        other answers are left alone.
        """
        take = self._takes.pop(request_id, None)
        if take is None:
            return
        with self._lock:
            take.void = True
            if self._playing is take:
                self._playing = None
                self._playback.cut()
                self._set_speaking(False)

    @property
    def speaking(self) -> bool:
        """Whether sound is going out now."""
        return self._speaking

    @property
    def alive(self) -> bool:
        """Both speech threads run."""
        return all(thread.is_alive() for thread in self._threads)

    def change_volume(self, step: float) -> float:
        """Louder (``step > 0``) or quieter, within 0 to 1, from the next piece; the new volume."""
        self._playback.volume = round(min(1.0, max(0.0, self._playback.volume + step)), 2)
        return self._playback.volume

    def say(self, text: str) -> None:
        """Speak a whole text, such as the last answer again."""
        self.feed("say", text)
        self.finish("say")

    def stop(self) -> None:
        """Barge-in: drop what is queued and cut the sound at once."""
        with self._lock:
            self._epoch += 1
            self._playing = None
            self._playback.cut()
            self._set_speaking(False)
        self._takes.clear()

    def close(self) -> None:
        """Stop speaking and end both threads."""
        self.stop()
        self._texts.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    def _synthesize(self) -> None:
        try:
            synthesizer: Synthesizer | None = load_synthesizer(self.settings)
        except ApplianceError as exc:
            synthesizer = None
            self._report(str(exc))
        while (item := self._texts.get()) is not None:
            take, text = item
            if self._dropped(take) or synthesizer is None:
                continue
            if text is None:
                self._sounds.put((take, None))
                continue
            try:
                self._sounds.put((take, synthesizer.synthesize(text)))
            except ApplianceError as exc:
                self._report(str(exc))
        self._sounds.put(None)

    def _play(self) -> None:
        while (item := self._sounds.get()) is not None:
            take, audio = item
            try:
                with self._lock:
                    if self._dropped(take):
                        continue
                    if audio is not None:
                        self._playback.open(audio.rate)
                        self._playing = take
                        self._set_speaking(True)
                if audio is None:  # the answer is complete: let it play out
                    self._playback.end()
                    with self._lock:
                        self._playing = None
                        self._set_speaking(False)
                    continue
                self._playback.write(audio.pcm)
            except ApplianceError as exc:
                self._report(str(exc))
        self._playback.end()

    def _dropped(self, take: _Take) -> bool:
        """Whether :meth:`stop` or :meth:`restart` dropped ``take``."""
        return take.void or take.epoch != self._epoch

    def _set_speaking(self, speaking: bool) -> None:
        if speaking != self._speaking:
            self._speaking = speaking
            self.on_speaking(speaking)

    def _report(self, message: str) -> None:
        if not self._failed:
            self._failed = True
            log.warning("speech_failed", error=message)
            self.on_error(message)
