"""The Wyoming server's speech part, in process: streams hand their recognizers on.

A stream that ended leaves its vosk recognizer to the next one (making one with
a full language model costs about 80 ms of CPU); the next stream must hear
exactly what a new recognizer would, whatever the last one left behind.
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from wyoming.audio import AudioChunk

from appliance.api import speech as wyoming_speech
from appliance.api.speech import Speech, Transcription
from appliance.config.loader import parse_settings
from appliance.voice.recognizer import Recognizer, SilenceTracker
from tests.helpers import yaml_text
from tests.speech import PHRASES, korean_model, korean_vosk, speak

pytestmark = pytest.mark.slow  # loads the Korean vosk model

CHUNK_BYTES = 2048


@pytest.fixture
def speech(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Speech:
    """Wyoming's speech with the test grammar, hearing with the worker's one Korean model."""
    monkeypatch.setattr(wyoming_speech, "load_model", lambda path: korean_vosk())
    config = {"data_dir": tmp_path, "voice": {"model_path": korean_model(), "tts": "none",
                                              "grammar": list(PHRASES)}}
    return Speech(parse_settings(yaml_text(config), "test.yaml"))


def _pcm(wav: Path) -> bytes:
    with wave.open(str(wav)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (16000, 2, 1)
        return w.readframes(w.getnframes())


async def _feed(transcription: Transcription, pcm: bytes, width: int = 2,
                chunk_bytes: int = CHUNK_BYTES) -> None:
    for i in range(0, len(pcm), chunk_bytes):
        await transcription.feed(AudioChunk(rate=16000, width=width, channels=1,
                                            audio=pcm[i: i + chunk_bytes]))


def test_a_stream_dropped_mid_utterance_leaves_a_recognizer_that_hears_the_next_as_new(
        speech: Speech, tmp_path: Path) -> None:
    weather = _without_trailing_quiet(_pcm(speak("날씨", tmp_path / "weather.wav")))
    temperature = _pcm(speak("온도", tmp_path / "temperature.wav"))

    async def scenario() -> tuple[str, bool]:
        await speech.start()
        dropped = await speech.transcription()
        # A word and no quiet after it (no utterance ended), in one chunk: vosk hears all of
        # it, as a closed stream's queued chunks are dropped, not heard.
        await _feed(dropped, weather, chunk_bytes=len(weather))
        dropped.close()  # the client went away: its recognizer is free once vosk is done
        async with asyncio.timeout(10):
            while not speech._idle:
                await asyncio.sleep(0.01)
        following = await speech.transcription()
        await _feed(following, temperature)
        heard = await following.finish()
        reused = following._recognizer is dropped._recognizer
        await speech.close()
        return heard, reused

    heard, reused = asyncio.run(scenario())
    assert reused, "the ended stream's recognizer was not handed on"
    assert heard == "온도"  # not "날씨 온도": nothing of the dropped stream is left


def test_a_reset_recognizer_keeps_nothing_of_its_last_stream(tmp_path: Path) -> None:
    pcm = _pcm(speak("날씨 온도", tmp_path / "both.wav"))
    used = Recognizer(korean_vosk(), PHRASES)
    heard = [h for h in used.feed(pcm[: len(pcm) * 3 // 5]) if h.text]
    assert heard, "vosk heard nothing of the first word"
    used.reset()
    assert _state(used) == _state(Recognizer(korean_vosk(), PHRASES))


def _state(recognizer: Recognizer) -> dict[str, Any]:
    """What a recognizer keeps besides vosk's own decoder, trackers opened up."""
    return {name: vars(value) if isinstance(value, SilenceTracker) else value
            for name, value in vars(recognizer).items() if name != "_kaldi"}


def _without_trailing_quiet(pcm: bytes) -> bytes:
    samples = np.frombuffer(pcm, dtype=np.int16)
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 1000)
    return samples[: loud[-1] + 1].tobytes()


def test_a_recognizer_whose_stream_failed_is_not_handed_on(
        speech: Speech, tmp_path: Path) -> None:
    pcm = _pcm(speak("날씨", tmp_path / "weather.wav"))

    async def scenario() -> tuple[str, bool]:
        await speech.start()
        failed = await speech.transcription()
        await _feed(failed, b"\x00" * 7, width=3)  # not a whole number of 3-byte frames
        with pytest.raises(Exception, match="not a whole number of frames"):
            await failed.finish()
        following = await speech.transcription()
        await _feed(following, pcm)
        heard = await following.finish()
        reused = following._recognizer is failed._recognizer
        await speech.close()
        return heard, reused

    heard, reused = asyncio.run(scenario())
    assert not reused
    assert heard == "날씨"
