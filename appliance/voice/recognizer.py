"""Speech to text with vosk: a model loaded once, a recognizer per audio stream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import vosk

from appliance.errors import ApplianceError
from appliance.voice.audio import RATE

vosk.SetLogLevel(-1)


class SpeechModelError(ApplianceError):
    """The vosk model is missing or broken."""


@dataclass(frozen=True)
class Heard:
    """A recognized piece of speech; ``final`` at the end of an utterance.

    ``end_s`` is where the utterance ended in the audio stream; ``ms`` how long
    (wall clock) its recognition took, from its first audio to its result.
    """

    text: str
    final: bool
    end_s: float
    ms: float = 0.0


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


class Recognizer:
    """One audio stream's recognizer.

    With ``grammar`` only those phrases (and ``[unk]``) are recognized. An
    utterance ends at vosk's own endpoint or after ``max_utterance_s``.
    """

    def __init__(self, model: vosk.Model, grammar: Iterable[str] = (),
                 max_utterance_s: float = 15.0) -> None:
        phrases = list(grammar)
        self._kaldi = (vosk.KaldiRecognizer(model, RATE, json.dumps(
            [*phrases, "[unk]"], ensure_ascii=False)) if phrases
            else vosk.KaldiRecognizer(model, RATE))
        self.max_bytes = int(max_utterance_s * RATE * 2)
        self._fed = 0
        self._utterance = 0
        self._partial = ""
        self._began: float | None = None

    def feed(self, chunk: bytes) -> Iterator[Heard]:
        """Recognize one chunk; yields a partial result when it changes and finals."""
        self._fed += len(chunk)
        self._utterance += len(chunk)
        if self._began is None:
            self._began = time.perf_counter()
        if self._kaldi.AcceptWaveform(chunk):
            yield from self._final(json.loads(self._kaldi.Result()))
        elif self._utterance >= self.max_bytes:
            yield from self._final(json.loads(self._kaldi.FinalResult()))
        else:
            partial = json.loads(self._kaldi.PartialResult()).get("partial", "")
            if partial and partial != self._partial:
                self._partial = partial
                yield Heard(_clean(partial), False, self._fed / (RATE * 2))

    def finish(self) -> Iterator[Heard]:
        """Flush at the end of the stream."""
        yield from self._final(json.loads(self._kaldi.FinalResult()))

    def _final(self, result: dict[str, str]) -> Iterator[Heard]:
        began, self._began = self._began, None
        self._utterance = 0
        self._partial = ""
        text = _clean(result.get("text", ""))
        if text:
            took = (time.perf_counter() - began) * 1000 if began is not None else 0.0
            yield Heard(text, True, self._fed / (RATE * 2), round(took, 1))


def _clean(text: str) -> str:
    return " ".join(w for w in text.split() if w != "[unk]")


def transcribe(model: vosk.Model, chunks: Iterable[bytes], grammar: Iterable[str] = (),
               max_utterance_s: float = 15.0) -> Iterator[Heard]:
    """Every result for a whole stream of chunks, flushed at its end."""
    recognizer = Recognizer(model, grammar, max_utterance_s)
    for chunk in chunks:
        yield from recognizer.feed(chunk)
    yield from recognizer.finish()
