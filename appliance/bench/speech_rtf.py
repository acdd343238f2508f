"""Speech through the Wyoming server against bare vosk: the real-time factor of each.

A Wyoming ``transcribe`` stream is sent at full speed, and a bare vosk
``KaldiRecognizer`` in this process is fed the same audio; the real-time factor
is processing time over audio length. Target: Wyoming at most 1.1x bare vosk.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

import vosk
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient

from appliance.bench.spoken import spoken_wav
from appliance.config import Settings
from appliance.voice.audio import RATE, read_wav

CHUNK_BYTES = 3200  # 100 ms of 16 kHz 16-bit mono


def _bare_vosk(model: vosk.Model, grammar: tuple[str, ...], pcm: bytes) -> float:
    """Seconds a bare recognizer takes for ``pcm``, fed 100 ms at a time at full speed."""
    started = time.perf_counter()
    kaldi = (vosk.KaldiRecognizer(model, RATE, json.dumps([*grammar, "[unk]"],
                                                           ensure_ascii=False))
             if grammar else vosk.KaldiRecognizer(model, RATE))
    for i in range(0, len(pcm), CHUNK_BYTES):
        kaldi.AcceptWaveform(pcm[i: i + CHUNK_BYTES])
    kaldi.FinalResult()
    return time.perf_counter() - started


async def _wyoming(port: int, pcm: bytes) -> float:
    """Seconds from the first audio sent to the transcript, through the Wyoming server."""
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=120) as client:
        started = time.perf_counter()
        await client.write_event(Transcribe().event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        for i in range(0, len(pcm), CHUNK_BYTES):
            await client.write_event(AudioChunk(rate=RATE, width=2, channels=1,
                                                audio=pcm[i: i + CHUNK_BYTES]).event())
        await client.write_event(AudioStop().event())
        while (event := await client.read_event()) is not None:
            if event.type == "transcript":
                return time.perf_counter() - started
            if event.type == "error":
                raise RuntimeError(f"the Wyoming server said: {event.data.get('text')}")
    raise RuntimeError("the Wyoming server hung up before the transcript")


def speech_rtf(settings: Settings, port: int, speech_voice: str, work: Path,
               rounds: int) -> tuple[float | None, float | None, float]:
    """``(Wyoming RTF, bare vosk RTF, seconds of audio)``, medians; ``None`` without vosk."""
    voice = settings.voice
    if voice.model_path is None:
        return None, None, 0.0
    texts = list(voice.grammar[:5]) or ["what is the weather like today",
                                        "turn on the kitchen light"]
    clips = [read_wav(spoken_wav(text, speech_voice, work / f"phrase{i}.wav", 1.0))
             for i, text in enumerate(texts)]
    model = vosk.Model(str(voice.model_path))
    ours: list[float] = []
    bare: list[float] = []
    for _ in range(rounds):
        for pcm in clips:
            seconds = len(pcm) / (RATE * 2)
            bare.append(_bare_vosk(model, voice.grammar, pcm) / seconds)
            ours.append(asyncio.run(_wyoming(port, pcm)) / seconds)
    audio = sum(len(pcm) for pcm in clips) / (RATE * 2)
    return statistics.median(ours), statistics.median(bare), audio
