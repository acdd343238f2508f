"""WAV input: streamed in bounded memory, equal to a whole-file conversion; bad headers refused."""

from __future__ import annotations

import os
import struct
import threading
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest

from appliance.voice.audio import CHUNK_BYTES, RATE, AudioError, Resampler, read_wav, wav_chunks
from appliance.voice.service import WAV_SPEED_ENV, wav_source


def _signal(rate: int, seconds: float, channels: int, start: int = 0) -> np.ndarray:
    """A chirp per channel (different on each), as floats in -1..1, from sample ``start``."""
    t = (start + np.arange(int(rate * seconds))) / rate
    return np.stack([0.8 * np.sin(2 * np.pi * (200 + 150 * c) * t * (1 + t / 4))
                     for c in range(channels)], axis=1)


def _encode(signal: np.ndarray, width: int) -> bytes:
    """Interleaved little-endian PCM of ``width`` bytes, written independently of the reader."""
    if width == 1:
        return (np.round(signal * 127) + 128).astype(np.uint8).tobytes()
    scale = float(1 << (8 * width - 1)) - 1
    ints = np.round(signal * scale).astype(np.int64).ravel()
    return b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints) if width == 3 \
        else ints.astype(f"<i{width}").tobytes()


def _write_wav(path: Path, rate: int, channels: int, width: int, frames: bytes) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(frames)
    return path


def _reference(path: Path) -> np.ndarray:
    """The whole-file conversion this reader replaced: all samples at once, one np.interp."""
    with wave.open(str(path)) as wav:
        rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
        raw = wav.readframes(wav.getnframes())
    if width == 3:  # pad each sample to 4 bytes and shift the sign in
        padded = np.zeros((len(raw) // 3, 4), np.uint8)
        padded[:, 1:] = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        samples = (padded.view("<i4").ravel() >> 8) / 256
    else:
        dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
        samples = np.frombuffer(raw, dtype=dtype).astype(np.float64)
        samples = (samples - 128) * 256 if width == 1 else samples / (65536 if width == 4 else 1)
    samples = samples.reshape(-1, channels).mean(1)
    if rate != RATE:
        target = np.arange(0, len(samples) / rate, 1 / RATE)
        samples = np.interp(target, np.arange(len(samples)) / rate, samples)
    return np.clip(samples, -32768, 32767).astype(np.int16)


@pytest.mark.parametrize(("rate", "channels", "width"), [
    (8000, 1, 1), (16000, 1, 2), (22050, 2, 2), (44100, 2, 3), (48000, 6, 4), (192000, 1, 2),
    (11025, 8, 2),
])
def test_streaming_equals_the_whole_file_conversion(tmp_path: Path, rate: int, channels: int,
                                                    width: int) -> None:
    path = _write_wav(tmp_path / "in.wav", rate, channels, width,
                      _encode(_signal(rate, 1.3, channels), width))
    chunks = list(wav_chunks(path))
    assert all(len(c) == CHUNK_BYTES for c in chunks[:-1]) and 0 < len(chunks[-1]) <= CHUNK_BYTES
    streamed = np.frombuffer(b"".join(chunks), np.int16)
    reference = _reference(path)
    assert abs(len(streamed) - len(reference)) <= 1  # float arange vs exact integer positions
    n = min(len(streamed), len(reference))
    assert np.abs(streamed[:n].astype(int) - reference[:n]).max() <= 1  # rounding, no clicks
    assert read_wav(path) == b"".join(chunks)


def test_block_boundaries_change_nothing(tmp_path: Path) -> None:
    path = _write_wav(tmp_path / "in.wav", 44100, 2, 2, _encode(_signal(44100, 0.7, 2), 2))
    whole = read_wav(path)
    for block_frames in (1, 2, 3, 441, 4096, 1 << 20):
        assert b"".join(wav_chunks(path, block_frames)) == whole, block_frames


def test_the_resampler_carries_its_state_across_blocks() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1000, 10_007)
    whole = Resampler(44100)
    expected = np.concatenate([whole.feed(x), whole.finish()])
    pieces = Resampler(44100)
    cuts = np.sort(rng.choice(len(x), 40, replace=False))
    out = [pieces.feed(block) for block in np.split(x, cuts)]
    assert np.array_equal(np.concatenate([*out, pieces.finish()]), expected)
    assert len(expected) == -(-len(x) * RATE // 44100)


def test_a_ten_minute_wav_streams_in_bounded_memory(tmp_path: Path) -> None:
    rate, channels, seconds = 22050, 2, 600
    path = tmp_path / "long.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        for start in range(0, rate * seconds, rate * 10):
            wav.writeframes(_encode(_signal(rate, 10, channels, start), 2))
    size = path.stat().st_size
    assert size > 50_000_000
    tracemalloc.start()
    try:
        total, chunks = 0, 0
        for chunk in wav_chunks(path):
            total += len(chunk)
            chunks += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == -(-rate * seconds * RATE // rate) * 2 == seconds * RATE * 2
    assert chunks == seconds * 10
    assert peak < 2 << 20, f"peak {peak} bytes for a {size}-byte file"  # whole: over 250 MB


def _riff(fmt: bytes, data_claim: int, data: bytes) -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", data_claim) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _fmt(rate: int, channels: int, bits: int, tag: int = 1) -> bytes:
    block = channels * ((bits + 7) // 8)
    return struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)


@pytest.mark.parametrize(("data", "problem"), [
    (_riff(_fmt(0, 1, 16), 1000, bytes(1000)),
     "a sample rate of 0 Hz; expected 8000 to 192000"),
    (_riff(_fmt(1, 1, 16), 1000, bytes(1000)),
     "a sample rate of 1 Hz; expected 8000 to 192000"),
    (_riff(_fmt(4_000_000, 1, 16), 1000, bytes(1000)),
     "a sample rate of 4000000 Hz; expected 8000 to 192000"),
    (_riff(_fmt(16000, 9, 16), 1800, bytes(1800)), "9 channels; expected 1 to 8"),
    (_riff(_fmt(16000, 1, 40), 1000, bytes(1000)), "unsupported sample width of 5 bytes"),
    (_riff(_fmt(16000, 0, 16), 1000, bytes(1000)), "not a WAV audio file (bad # of channels)"),
    (_riff(_fmt(16000, 1, 32, tag=3), 1000, bytes(1000)),
     "not a WAV audio file (unknown format: 3)"),
    (_riff(_fmt(16000, 2, 16), 0xFFFFFFFF, bytes(1024)),
     "the header claims 4294967292 bytes of audio, but only 1024 follow; the file is "
     "truncated or damaged"),
    (_riff(_fmt(16000, 1, 16), 1000, bytes(10)),
     "the header claims 1000 bytes of audio, but only 10 follow; the file is truncated or "
     "damaged"),
    (b"RIFF\x10\x00\x00\x00WAVEfmt ", "not a WAV audio file (fmt chunk and/or data chunk "
                                        "missing)"),
    (b"this is not audio at all", "not a WAV audio file (file does not start with RIFF id)"),
    (b"", "not a WAV audio file"),
])
def test_hostile_headers_are_one_line(tmp_path: Path, data: bytes, problem: str) -> None:
    path = tmp_path / "in.wav"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(AudioError) as info:
            read_wav(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value) == f"{path}: {problem}"
    assert peak < 1 << 20  # nothing the header claims was allocated


def test_files_that_are_not_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.wav")  # no writer: a plain open() would wait forever
    (tmp_path / "dir.wav").mkdir()
    for path, problem in ((tmp_path / "fifo.wav", "not a WAV audio file (Not a regular file)"),
                          (tmp_path / "dir.wav", "not a WAV audio file (Is a directory)"),
                          (Path("/dev/zero"), "not a WAV audio file (Not a regular file)"),
                          (tmp_path / "absent.wav", "no such file")):
        with pytest.raises(AudioError) as info:
            read_wav(path)
        assert str(info.value) == f"{path}: {problem}"


def test_a_faster_wav_source_delivers_the_same_audio(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_wav(tmp_path / "in.wav", 22050, 1, 2, _encode(_signal(22050, 1.3, 1), 2))
    monkeypatch.setenv(WAV_SPEED_ENV, "1000")  # what the voice tests of `appliance run` use
    assert list(wav_source(path, threading.Event())) == list(wav_chunks(path))
    stop = threading.Event()
    stop.set()
    assert list(wav_source(path, stop)) == []  # a stopped source ends at once
