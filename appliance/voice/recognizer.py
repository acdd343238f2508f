"""Speech to text with vosk: a model loaded once, a recognizer per audio stream.

An utterance ends when Kaldi's endpointer sees enough trailing silence. Its
rules come from the model's ``conf/model.conf`` and vosk 0.3.45 has no call to
change them, so a different ``end_silence_s`` loads the model through a
temporary view of its directory (the files linked, ``model.conf`` rewritten).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vosk

from appliance.errors import ApplianceError
from appliance.voice.audio import RATE

vosk.SetLogLevel(-1)


class SpeechModelError(ApplianceError):
    """The vosk model is missing or broken."""


@dataclass(frozen=True)
class Heard:
    """A recognized piece of speech; ``final`` at the end of an utterance.

    ``end_s`` is where the recognizer was in the audio stream when it gave the
    result, ``speech_end_s`` where the last word ended (the end of speech), and
    ``ms`` how long (wall clock) recognition took, from its first audio to its
    result.
    """

    text: str
    final: bool
    end_s: float
    ms: float = 0.0
    speech_end_s: float | None = None


VOSK_END_SILENCE_S = 0.5
"""The trailing silence of vosk's own first endpoint rule (its others wait 2x and 4x that)."""


def load_model(path: Path | None, end_silence_s: float = VOSK_END_SILENCE_S) -> vosk.Model:
    """Load a vosk model directory; a missing or broken one is a one-line error.

    ``end_silence_s`` is the trailing silence that ends an utterance when the
    recognizer is confident of it; less confident ends wait twice and four
    times as long (Kaldi's endpoint rules 2, 3 and 4).
    """
    if path is None:
        raise SpeechModelError("voice.model_path is not set")
    if not (path / "am" / "final.mdl").is_file():
        raise SpeechModelError(f"{path}: not a vosk model (no am/final.mdl)")
    try:
        if end_silence_s == VOSK_END_SILENCE_S or not (path / "conf" / "model.conf").is_file():
            return vosk.Model(str(path))
        with tempfile.TemporaryDirectory(prefix="appliance-vosk-") as view:
            return vosk.Model(str(_with_endpoint(path, Path(view), end_silence_s)))
    except Exception as exc:  # vosk raises a bare Exception for a broken model
        raise SpeechModelError(f"{path}: the vosk model cannot be loaded ({exc})") from None


def _with_endpoint(model: Path, view: Path, end_silence_s: float) -> Path:
    """``view`` made a copy of ``model`` by links, with its endpoint rules replaced."""
    for entry in model.iterdir():
        if entry.name != "conf":
            os.symlink(entry.resolve(), view / entry.name)
    (view / "conf").mkdir()
    for entry in (model / "conf").iterdir():
        if entry.name != "model.conf":
            os.symlink(entry.resolve(), view / "conf" / entry.name)
    lines = [line for line in (model / "conf" / "model.conf").read_text().splitlines()
             if not line.startswith("--endpoint.rule")]
    lines += [f"--endpoint.rule{rule}.min-trailing-silence={end_silence_s * factor:g}"
              for rule, factor in ((2, 1), (3, 2), (4, 4))]
    (view / "conf" / "model.conf").write_text("\n".join(lines) + "\n")
    return view


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
        self._kaldi.SetWords(True)
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

    def _final(self, result: dict[str, Any]) -> Iterator[Heard]:
        began, self._began = self._began, None
        self._utterance = 0
        self._partial = ""
        text = _clean(result.get("text", ""))
        if text:
            took = (time.perf_counter() - began) * 1000 if began is not None else 0.0
            words = [w for w in result.get("result", []) if w.get("word") != "[unk]"]
            yield Heard(text, True, self._fed / (RATE * 2), round(took, 1),
                        float(words[-1]["end"]) if words else None)


def _clean(text: str) -> str:
    return " ".join(w for w in text.split() if w != "[unk]")


def transcribe(model: vosk.Model, chunks: Iterable[bytes], grammar: Iterable[str] = (),
               max_utterance_s: float = 15.0) -> Iterator[Heard]:
    """Every result for a whole stream of chunks, flushed at its end."""
    recognizer = Recognizer(model, grammar, max_utterance_s)
    for chunk in chunks:
        yield from recognizer.feed(chunk)
    yield from recognizer.finish()
