"""The Wyoming server's speech part, in process: a stream's recognizer comes with its audio.

Making a vosk recognizer with a full language model costs about 80 ms of CPU,
so a stream makes one only once it has audio that converts: a stream that sends
none, or only audio that cannot be converted, costs none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import vosk
from wyoming.audio import AudioChunk

from appliance.api.speech import Speech, Transcription
from appliance.config.loader import parse_settings
from appliance.config.schema import VoiceSettings
from appliance.voice.recognizer import Recognizer
from tests.helpers import yaml_text
from tests.speech import korean_model, pcm_of, share_korean_vosk, speak

pytestmark = pytest.mark.slow  # loads the Korean vosk model

CHUNK_BYTES = 2048


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[Recognizer]:
    """Every recognizer the speech part makes, in order."""
    out: list[Recognizer] = []
    make = Recognizer.for_voice

    def counted(model: vosk.Model, voice: VoiceSettings) -> Recognizer:
        out.append(make(model, voice))
        return out[-1]

    monkeypatch.setattr(Recognizer, "for_voice", counted)
    return out


@pytest.fixture
def speech(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Speech:
    """Wyoming's speech with a full language model (no grammar), the worker's one model."""
    share_korean_vosk(monkeypatch)
    config = {"data_dir": tmp_path, "voice": {"model_path": korean_model(), "tts": "none"}}
    return Speech(parse_settings(yaml_text(config), "test.yaml"))


async def _feed(transcription: Transcription, pcm: bytes, width: int = 2) -> None:
    for i in range(0, len(pcm), CHUNK_BYTES):
        await transcription.feed(AudioChunk(rate=16000, width=width, channels=1,
                                            audio=pcm[i: i + CHUNK_BYTES]))


def _stream(speech: Speech, send: Callable[[Transcription], Awaitable[None]]) -> str:
    async def scenario() -> str:
        await speech.start()
        try:
            transcription = await speech.transcription()
            await send(transcription)
            return await transcription.finish()
        finally:
            await speech.close()

    return asyncio.run(scenario())


def test_a_stream_without_audio_makes_no_recognizer(speech: Speech,
                                                     made: list[Recognizer]) -> None:
    async def nothing(transcription: Transcription) -> None:
        await transcription.feed(AudioChunk(rate=16000, width=2, channels=1, audio=b""))

    assert _stream(speech, nothing) == ""
    assert made == []


def test_audio_that_cannot_be_converted_makes_no_recognizer(speech: Speech,
                                                            made: list[Recognizer]) -> None:
    async def broken(transcription: Transcription) -> None:
        await _feed(transcription, b"\x00" * 7, width=3)  # not a whole number of frames

    with pytest.raises(Exception, match="not a whole number of frames"):
        _stream(speech, broken)
    assert made == []


def test_a_stream_with_speech_makes_one_recognizer_and_is_heard(
        speech: Speech, made: list[Recognizer], tmp_path: Path) -> None:
    pcm = pcm_of(speak("안녕하세요", tmp_path / "hello.wav"))

    async def spoken(transcription: Transcription) -> None:
        await _feed(transcription, pcm)

    assert _stream(speech, spoken).strip()  # a full language model: some words, not asserted
    assert len(made) == 1
