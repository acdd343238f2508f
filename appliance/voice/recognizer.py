"""Speech to text with vosk: a model loaded once, a recognizer per audio stream.

An utterance ends at vosk's own endpoint, after ``end_silence_s`` of quiet
that follows speech, or after ``max_utterance_s``. Vosk's endpoint alone
waits about a second past the last word (measured with the Korean model), and
that wait is part of every spoken answer's latency; the quiet is judged by
:class:`SilenceTracker` against the room's own noise floor.

Vosk's final result often differs from its last partial in the last word (the
partial's best path need not end where a phrase may end), so reading the
partials ahead still leaves that word to read once the utterance is over. The
recognizer therefore settles the utterance :data:`SETTLE_S` into the quiet:
it takes vosk's final result then, gives it as a partial for reading ahead,
and gives it as the final once the quiet has lasted ``end_silence_s``. Speech
that resumes in between continues the same utterance.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import vosk

from appliance.config.schema import VoiceSettings
from appliance.errors import ApplianceError
from appliance.voice.audio import RATE

vosk.SetLogLevel(-1)

SETTLE_S = 0.3
"""Seconds of quiet after speech at which the utterance's words are settled: over the
benchmark and test phrases, vosk's result then was the one it gave at 0.5 s in 16 of 16
(at 0.2 s, 14 of 16)."""
SETTLE_UP_TO_S = 1.0
"""Only an ``end_silence_s`` up to this is settled: vosk's own endpoint, which a settled
utterance no longer reaches, ends utterances about a second past their last word anyway."""


class SpeechModelError(ApplianceError):
    """The vosk model is missing or broken."""


@dataclass(frozen=True)
class Heard:
    """A recognized piece of speech; ``final`` at the end of an utterance.

    ``end_s`` is where the recognizer was in the audio stream when it gave the
    result, ``speech_start_s`` where the utterance's first sound above the
    room's noise began, ``speech_end_s`` where the last word ended (the end of
    speech), and ``ms`` how long (wall clock) recognition took, from its first
    audio to its result. ``speech_at`` is when (``time.monotonic()``) that
    first sound reached the microphone, for a live stream
    (:class:`~appliance.voice.hearing.Hearing` knows its clock): what the echo
    guard judges.
    """

    text: str
    final: bool
    end_s: float
    ms: float = 0.0
    speech_end_s: float | None = None
    speech_start_s: float | None = None
    speech_at: float | None = None


def load_model(path: Path | None) -> vosk.Model:
    """Load a vosk model directory; a missing or broken one is a one-line error."""
    if path is None:
        raise SpeechModelError("voice.model_path is not set")
    if not (path / "am" / "final.mdl").is_file():
        raise SpeechModelError(f"{path}: not a vosk model (no am/final.mdl)")
    try:
        return vosk.Model(str(path))
    except Exception as exc:  # vosk raises a bare Exception for a broken model
        raise SpeechModelError(f"{path}: the vosk model cannot be loaded ({exc})") from None


class SilenceTracker:
    """How long it has been quiet since the last speech, chunk by chunk.

    A chunk is speech when its level is ``margin_db`` above the noise floor
    (and above ``min_db``). The floor starts at a quiet room's ``floor_db``,
    follows quieter chunks at once and creeps up by ``rise_db_s``, so a noisy
    room or a fan that starts is learned within seconds, while the words of
    one sentence do not lift it past their own level.
    """

    def __init__(self, margin_db: float = 12.0, min_db: float = -55.0,
                 floor_db: float = -65.0, rise_db_s: float = 3.0) -> None:
        self.margin_db, self.min_db, self.rise_db_s = margin_db, min_db, rise_db_s
        self._floor = floor_db
        self.heard_speech = False
        self.quiet_s = 0.0

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of 16-bit PCM at :data:`RATE`."""
        samples = np.frombuffer(chunk[: len(chunk) // 2 * 2], dtype=np.int16)
        seconds = len(samples) / RATE
        if not len(samples):
            return
        rms = math.sqrt(float(np.mean(samples.astype(np.float32) ** 2)))
        level = 20 * math.log10(max(rms, 1.0) / 32768)
        self._floor = min(self._floor + self.rise_db_s * seconds, level)
        if level >= max(self._floor + self.margin_db, self.min_db):
            self.heard_speech, self.quiet_s = True, 0.0
        else:
            self.quiet_s += seconds

    def reset(self) -> None:
        """A new utterance begins: no speech heard in it yet (the room's floor stays)."""
        self.heard_speech, self.quiet_s = False, 0.0


class Recognizer:
    """One audio stream's recognizer.

    With ``grammar`` only those phrases (and ``[unk]``) are recognized. An
    utterance ends at vosk's own endpoint, after ``end_silence_s`` of quiet
    following speech, or after ``max_utterance_s``.
    """

    def __init__(self, model: vosk.Model, grammar: Iterable[str] = (),
                 max_utterance_s: float = 15.0, end_silence_s: float = 0.7) -> None:
        phrases = list(grammar)
        self._kaldi = (vosk.KaldiRecognizer(model, RATE, json.dumps(
            [*phrases, "[unk]"], ensure_ascii=False)) if phrases
            else vosk.KaldiRecognizer(model, RATE))
        self._kaldi.SetWords(True)
        self.max_bytes = int(max_utterance_s * RATE * 2)
        self.end_silence_s = end_silence_s
        self._settles = SETTLE_S < end_silence_s <= SETTLE_UP_TO_S
        self._silence = SilenceTracker()
        self._fed = 0
        self._utterance = 0
        self._partial = ""
        self._began: float | None = None
        self._speech_start_s: float | None = None
        self._skipped_s = 0.0  # audio of the stream that vosk was not fed
        self._settled: dict[str, Any] | None = None  # vosk's result at the settle point
        self._resumed = False  # speech again since then: it belongs to the utterance

    @classmethod
    def for_voice(cls, model: vosk.Model, voice: VoiceSettings) -> Recognizer:
        """A recognizer with the grammar and endpointing of ``voice``."""
        return cls(model, voice.grammar, voice.max_utterance_s, voice.end_silence_s)

    @property
    def in_utterance(self) -> bool:
        """Speech has been heard since the last result: an utterance is under way."""
        return self._silence.heard_speech

    def skip(self, chunk: bytes) -> None:
        """The stream went on without this recognizer: keep its times those of the stream."""
        self._fed += len(chunk)
        self._skipped_s += len(chunk) / (RATE * 2)

    def feed(self, chunk: bytes) -> Iterator[Heard]:
        """Recognize one chunk; yields a partial result when it changes and finals."""
        self._fed += len(chunk)
        self._utterance += len(chunk)
        if self._began is None:
            self._began = time.perf_counter()
        self._silence.feed(chunk)
        silence = self._silence
        if self._speech_start_s is None and silence.heard_speech:
            self._speech_start_s = (self._fed - len(chunk)) / (RATE * 2)
        if self._settled is not None and not silence.quiet_s:
            self._resumed = True
        if self._kaldi.AcceptWaveform(chunk):
            yield from self._final(json.loads(self._kaldi.Result()))
        elif self._utterance >= self.max_bytes or (
                silence.heard_speech and silence.quiet_s >= self.end_silence_s):
            yield from self._final(json.loads(self._kaldi.FinalResult()))
        elif (self._settles and silence.heard_speech and silence.quiet_s >= SETTLE_S
              and (self._settled is None or self._resumed)):
            self._settled = self._joined(json.loads(self._kaldi.FinalResult()))
            self._resumed = False
            yield from self._partial_result(self._settled.get("text", ""))
        elif self._settled is None or self._resumed:  # else still quiet: nothing new
            partial = json.loads(self._kaldi.PartialResult()).get("partial", "")
            if self._settled is not None:
                partial = f"{self._settled.get('text', '')} {partial}".strip()
            yield from self._partial_result(partial)

    def _partial_result(self, partial: str) -> Iterator[Heard]:
        if partial and partial != self._partial:
            self._partial = partial
            yield Heard(_clean(partial), False, self._fed / (RATE * 2),
                        speech_start_s=self._speech_start_s)

    def _joined(self, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` after what was settled, if the speech resumed since (else that alone)."""
        settled = self._settled
        if settled is None:
            return result
        if not self._resumed:
            return settled  # vosk's words since are made of the quiet, if any
        text = f"{settled.get('text', '')} {result.get('text', '')}".strip()
        return {"text": text, "result": [*settled.get("result", []),
                                         *result.get("result", [])]}

    def finish(self) -> Iterator[Heard]:
        """Flush at the end of the stream."""
        yield from self._final(json.loads(self._kaldi.FinalResult()))

    def _final(self, result: dict[str, Any]) -> Iterator[Heard]:
        result = self._joined(result)
        self._settled, self._resumed = None, False
        began, self._began = self._began, None
        start_s, self._speech_start_s = self._speech_start_s, None
        self._utterance = 0
        self._silence.reset()
        self._partial = ""
        text = _clean(result.get("text", ""))
        if text:
            took = (time.perf_counter() - began) * 1000 if began is not None else 0.0
            words = [w for w in result.get("result", []) if w.get("word") != "[unk]"]
            yield Heard(text, True, self._fed / (RATE * 2), round(took, 1),
                        float(words[-1]["end"]) + self._skipped_s if words else None, start_s)


def _clean(text: str) -> str:
    return " ".join(w for w in text.split() if w != "[unk]")


def transcribe(recognizer: Recognizer, chunks: Iterable[bytes]) -> Iterator[Heard]:
    """Every result for a whole stream of chunks, flushed at its end."""
    for chunk in chunks:
        yield from recognizer.feed(chunk)
    yield from recognizer.finish()
