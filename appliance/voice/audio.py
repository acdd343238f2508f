"""Audio sources: 16 kHz mono 16-bit PCM from a WAV file, raw stdin, or the ALSA microphone.

Every source is an iterator of PCM chunks, consumed on the recognition thread.
A WAV file is streamed: read, mixed down and resampled block by block, so an
hour of audio needs no more memory than a second of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from appliance.errors import ApplianceError
from appliance.files import open_regular

RATE = 16000
CHUNK_BYTES = 3200  # 100 ms
MIN_RATE, MAX_RATE = 8000, 192000
MAX_CHANNELS = 8
WIDTHS = (1, 2, 3, 4)
BLOCK_FRAMES = 4096  # WAV frames read at a time: at most 128 KiB, at 8 channels of 32 bits


class AudioError(ApplianceError):
    """An audio source cannot be opened or does not hold audio."""


@dataclass(frozen=True)
class WavFormat:
    """What a WAV header says, once checked against sane limits and the file's real size."""

    rate: int
    channels: int
    width: int
    frames: int


def _check(path: Path, wav: wave.Wave_read, data_bytes: int) -> WavFormat:
    rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{path}: a sample rate of {rate} Hz; expected {MIN_RATE} to "
                         f"{MAX_RATE}")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"{path}: {channels} channels; expected 1 to {MAX_CHANNELS}")
    if width not in WIDTHS:
        raise AudioError(f"{path}: unsupported sample width of {width} bytes")
    frames = wav.getnframes()
    if frames * channels * width > data_bytes:
        raise AudioError(f"{path}: the header claims {frames * channels * width} bytes of "
                         f"audio, but only {data_bytes} follow; the file is truncated or damaged")
    return WavFormat(rate, channels, width, frames)


def _mono(frames: bytes, fmt: WavFormat) -> np.ndarray:
    """Whole frames of ``fmt`` as mono float64 samples on the 16-bit scale."""
    raw = np.frombuffer(frames, dtype=np.uint8)
    if fmt.width == 1:
        samples = (raw.astype(np.float64) - 128) * 256
    elif fmt.width == 2:
        samples = raw.view("<i2").astype(np.float64)
    elif fmt.width == 3:
        b = raw.reshape(-1, 3).astype(np.int32)
        samples = (((b[:, 2] << 16 | b[:, 1] << 8 | b[:, 0]) ^ 0x800000) - 0x800000) / 256
    else:
        samples = raw.view("<i4") / 65536
    return samples.reshape(-1, fmt.channels).mean(1) if fmt.channels > 1 else samples


class Resampler:
    """Linear interpolation from ``rate`` to :data:`RATE`, fed in blocks of any size.

    Output sample ``k`` lies at input position ``k * rate / RATE``, in exact integer
    arithmetic, between two input samples; the last one of each block is kept for
    the next, so the output is the same however the input is cut.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._carry = np.empty(0)  # the latest input sample, at input index self._start
        self._start = 0
        self._next = 0  # the next output index

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """The output samples that ``samples`` (the next input) completes."""
        if self.rate == RATE:
            return samples
        work = np.concatenate([self._carry, samples])
        end = self._start + len(work)
        if end == 0:
            return work
        # Output k needs inputs i and i + 1 with i = k * rate // RATE; i + 1 < end for all below.
        stop = ((end - 1) * RATE + self.rate - 1) // self.rate
        k = np.arange(self._next, stop, dtype=np.int64)
        index, remainder = np.divmod(k * self.rate, RATE)
        local = index - self._start
        frac = remainder / RATE
        out = work[local] * (1 - frac) + work[local + 1] * frac
        self._next = max(self._next, stop)
        self._carry, self._start = work[-1:], end - 1
        return out

    def finish(self) -> np.ndarray:
        """The last output samples, which lie past the last input sample and repeat it."""
        if self.rate == RATE or not len(self._carry):
            return np.empty(0)
        total = ((self._start + 1) * RATE + self.rate - 1) // self.rate
        return np.full(max(0, total - self._next), self._carry[0])


def _pcm(samples: np.ndarray) -> bytes:
    return np.clip(samples, -32768, 32767).astype(np.int16).tobytes()


def wav_chunks(path: Path, block_frames: int = BLOCK_FRAMES) -> Iterator[bytes]:
    """A WAV file of any rate and channel count as 16 kHz mono 16-bit PCM, in 100 ms chunks.

    The file is read ``block_frames`` at a time; the header is checked first
    against the file's real size, so a header that lies allocates nothing.
    """
    try:
        fh = open_regular(path)
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except OSError as exc:
        raise AudioError(f"{path}: not a WAV audio file ({exc.strerror})") from None
    with fh:
        try:
            with wave.open(fh, "rb") as wav:
                fmt = _check(path, wav, os.fstat(fh.fileno()).st_size - fh.tell())
                yield from _convert(wav, fmt, block_frames)
        except (wave.Error, EOFError, OSError) as exc:
            detail = f" ({exc})" if str(exc) else ""
            raise AudioError(f"{path}: not a WAV audio file{detail}") from None


def _convert(wav: wave.Wave_read, fmt: WavFormat, block_frames: int) -> Iterator[bytes]:
    resampler = Resampler(fmt.rate)
    out = bytearray()
    left = fmt.frames
    while left > 0:
        frames = wav.readframes(min(block_frames, left))
        whole = len(frames) // (fmt.channels * fmt.width)
        if whole == 0:
            break  # the file shrank under us: convert what there was
        left -= whole
        out += _pcm(resampler.feed(_mono(frames[:whole * fmt.channels * fmt.width], fmt)))
        while len(out) >= CHUNK_BYTES:
            yield bytes(out[:CHUNK_BYTES])
            del out[:CHUNK_BYTES]
    out += _pcm(resampler.finish())
    for start in range(0, len(out), CHUNK_BYTES):
        yield bytes(out[start:start + CHUNK_BYTES])


def read_wav(path: Path) -> bytes:
    """A whole WAV file as 16 kHz mono 16-bit PCM (for callers that need it all at once)."""
    return b"".join(wav_chunks(path))


WAV_SPEED_ENV = "APPLIANCE_WAV_SPEED"
"""For tests: a WAV source is read this many times faster than a microphone delivers audio.

Hearing measures audio time (the end of an utterance, the wake word's window), so
what is heard is the same; only tests that judge by the wall clock (the echo
guard's speech) need real time. Unset, or not a positive number: real time.
"""


def paced(chunks: Iterable[bytes], stop: threading.Event | None = None,
          speed: float = 1.0) -> Iterator[bytes]:
    """Chunks at the pace a microphone delivers them: each when its audio has been spoken.

    The schedule is absolute, so time spent by the consumer does not add up.
    Ends early when ``stop`` is set. ``speed``: that many times faster (tests).
    """
    stop = stop or threading.Event()
    started, sent = time.perf_counter(), 0
    for chunk in chunks:
        sent += len(chunk)
        if stop.wait(max(0.0, started + sent / (RATE * 2 * speed) - time.perf_counter())):
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
