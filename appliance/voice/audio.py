"""Audio sources: 16 kHz mono 16-bit PCM from a WAV file, raw stdin, or the ALSA microphone.

Every source is an iterator of PCM chunks, consumed on the recognition thread.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import wave
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from appliance.errors import ApplianceError

RATE = 16000
CHUNK_BYTES = 3200  # 100 ms


class AudioError(ApplianceError):
    """An audio source cannot be opened or does not hold audio."""


def read_wav(path: Path) -> bytes:
    """A WAV file of any rate and channel count as 16 kHz mono 16-bit PCM."""
    try:
        with wave.open(str(path), "rb") as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            frames = wav.readframes(wav.getnframes())
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except (wave.Error, EOFError, OSError) as exc:
        detail = f" ({exc})" if str(exc) else ""
        raise AudioError(f"{path}: not a WAV audio file{detail}") from None
    if width not in (1, 2, 4):
        raise AudioError(f"{path}: unsupported sample width of {width} bytes")
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    samples = np.frombuffer(frames, dtype=dtype).astype(np.float64)
    if width == 1:
        samples = (samples - 128) * 256
    elif width == 4:
        samples /= 65536
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(1)
    if rate != RATE and len(samples):
        duration = len(samples) / rate
        target = np.arange(0, duration, 1 / RATE)
        samples = np.interp(target, np.arange(len(samples)) / rate, samples)
    return np.clip(samples, -32768, 32767).astype(np.int16).tobytes()


def wav_chunks(path: Path) -> Iterator[bytes]:
    """A WAV file, converted, in 100 ms chunks."""
    pcm = read_wav(path)
    for start in range(0, len(pcm), CHUNK_BYTES):
        yield pcm[start:start + CHUNK_BYTES]


def paced(chunks: Iterable[bytes], stop: threading.Event | None = None) -> Iterator[bytes]:
    """Chunks at the pace a microphone delivers them: each when its audio has been spoken.

    The schedule is absolute, so time spent by the consumer does not add up.
    Ends early when ``stop`` is set.
    """
    stop = stop or threading.Event()
    started, sent = time.perf_counter(), 0
    for chunk in chunks:
        sent += len(chunk)
        if stop.wait(max(0.0, started + sent / (RATE * 2) - time.perf_counter())):
            return
        yield chunk


def stream_chunks(stream: BinaryIO) -> Iterator[bytes]:
    """Raw 16 kHz mono 16-bit PCM from a byte stream (stdin), until it ends."""
    while chunk := stream.read(CHUNK_BYTES):
        yield chunk


def mic_chunks(device: str | None = None) -> Iterator[bytes]:
    """The ALSA microphone through ``arecord``; a clear error when there is none."""
    if shutil.which("arecord") is None:
        raise AudioError("no arecord: apt-get install alsa-utils")
    command = ["arecord", "-q", "-t", "raw", "-f", "S16_LE", "-r", str(RATE), "-c", "1"]
    if device:
        command += ["-D", device]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        first = proc.stdout.read(CHUNK_BYTES)
        if not first:
            error = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            reason = error.splitlines()[-1] if error else "arecord produced no audio"
            raise AudioError(f"no microphone: {reason}")
        yield first
        yield from stream_chunks(proc.stdout)
    finally:
        proc.kill()
        proc.wait()
