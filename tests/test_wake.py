"""A real wake word: microWakeWord hears "okay nabu", and only then does vosk listen.

The wake word is spoken by the piper test voice (the models were trained on
synthetic speech); the question after it, in English, is heard by the Korean
vosk model in grammar mode as some phrase of its grammar, which is enough to
show that a request follows the wake word.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from appliance import logs
from appliance.config import load_settings
from appliance.config.schema import VoiceSettings, WakeSettings
from appliance.errors import ConfigError
from appliance.voice.audio import wav_chunks
from appliance.voice.hearing import Hearing, Woke
from appliance.voice.recognizer import Heard, Recognizer
from appliance.voice.wake import WakeWord, WakeWordError, check_wake
from tests.conftest import BASE, run_cli
from tests.helpers import eventually
from tests.services import Broker, Peer
from tests.speech import (
    PHRASES,
    korean_model,
    korean_vosk,
    piper_speak,
    silence,
)
from tests.voice_device import run_in_process

GRAMMAR = "[" + ", ".join(PHRASES) + "]"
QUESTION = "What is the weather like today?"


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wake word and a question, spoken by piper, and silence as long as the wake word."""
    tmp = tmp_path_factory.mktemp("voices")
    wake = piper_speak("Okay nabu.", tmp / "wake.wav")
    seconds = float(subprocess.run(["soxi", "-D", str(wake)], capture_output=True, text=True,
                                   check=True).stdout)
    return {"wake": wake, "question": piper_speak(QUESTION, tmp / "question.wav"),
            "quiet": silence(tmp / "quiet.wav", seconds), "gap": silence(tmp / "gap.wav", 1.5)}


def _stream(voices: dict[str, Path], out: Path, wake: bool) -> Path:
    """Silence, a question, then the wake word (or as much silence) and a question, silence."""
    parts = [voices["gap"], voices["question"], voices["gap"],
             voices["wake" if wake else "quiet"], voices["question"], voices["gap"],
             voices["gap"]]
    subprocess.run(["sox", *map(str, parts), str(out)], check=True)
    return out


def _events(wav: Path, wake: WakeSettings | None) -> list[Heard | Woke]:
    hearing = Hearing(Recognizer(korean_vosk(), PHRASES),
                      WakeWord(wake) if wake else None, window_s=8.0)
    events = [e for chunk in wav_chunks(wav) for e in hearing.feed(chunk)]
    return events + list(hearing.finish())


@pytest.mark.slow
def test_the_wake_word_is_heard_and_no_other_phrase_wakes_it(voices: dict[str, Path]) -> None:
    def wakes(model: str, wav: Path) -> int:
        detector = WakeWord(WakeSettings(engine="micro", model=model))
        return sum(detector.feed(chunk) for chunk in wav_chunks(wav))

    assert wakes("okay_nabu", voices["wake"]) == 1  # once, however long it lasts
    assert wakes("okay_nabu", voices["question"]) == 0
    assert wakes("hey_jarvis", voices["wake"]) == 0
    never = WakeSettings(engine="micro", threshold=1.0)
    assert sum(WakeWord(never).feed(c) for c in wav_chunks(voices["wake"])) == 0


@pytest.mark.slow
def test_vosk_hears_only_what_follows_the_wake_word(voices: dict[str, Path],
                                                    tmp_path: Path) -> None:
    stream = _stream(voices, tmp_path / "stream.wav", wake=True)
    events = _events(stream, WakeSettings(engine="micro"))
    (woke,) = [e for e in events if isinstance(e, Woke)]
    assert woke.phrase == "Okay Nabu"
    alone = [e for e in _events(stream, None) if isinstance(e, Heard) and e.final]
    assert alone[0].end_s < woke.at_s  # vosk on every sound hears the first question too
    before = events[:events.index(woke)]
    after = [e for e in events[events.index(woke):] if isinstance(e, Heard) and e.final]
    assert before == [] and len(after) == 1 and after[0].end_s > woke.at_s
    asleep = _events(_stream(voices, tmp_path / "asleep.wav", wake=False),
                     WakeSettings(engine="micro"))
    assert asleep == []  # no wake word: vosk heard nothing at all


def _voice(wav: Path) -> str:
    return (f"voice:\n  enabled: true\n  model_path: {korean_model()}\n  grammar: {GRAMMAR}\n"
            f"  source: {wav}\n  tts: none\n  activation: wake\n"
            "  wake: {engine: micro, model: okay_nabu}\n")


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """The names of the events this process logs at info and above, as they are logged."""
    names: list[str] = []

    def sink(event: Mapping[str, Any]) -> None:
        names.append(str(event.get("event")))

    logs.configure("info", "json", io.StringIO())  # the autouse setup logs warnings only
    logs.add_sink(sink)
    yield names
    logs.remove_sink(sink)


def _until_ended(events: list[str]) -> list[str]:
    """``events`` once the voice source has ended (a copy: logging goes on)."""
    return eventually(lambda: list(events) if "voice_source_ended" in events else None, 120,
                      "voice_source_ended logged", 0.2)


def _run_stream(tmp_path: Path, model_path: Path, broker: Broker, stream: Path,
                monkeypatch: pytest.MonkeyPatch, logged: list[str],
                first: Callable[[Peer], None] = lambda _peer: None) -> tuple[Peer, list[str]]:
    """A device in this process hears ``stream``; its peer, and the events until the source ended.

    ``first`` runs on the peer before the end is awaited (an answer to wait for).
    """
    ended: list[list[str]] = []

    def action(peer: Peer) -> None:
        first(peer)
        ended.append(_until_ended(logged))
        peer.drain(1)

    peer = run_in_process(tmp_path, model_path, broker.port, _voice(stream), monkeypatch, action)
    (events,) = ended
    return peer, events


@pytest.mark.slow
def test_run_wakes_on_the_wake_word_and_answers_what_follows(
        broker: Broker, model_path: Path, voices: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, logged: list[str]) -> None:
    def answered(peer: Peer) -> None:
        answer = peer.wait_for(lambda m: m.topic == f"{BASE}/answer").json()
        assert answer["source"] == "voice" and answer["tokens"] > 0

    peer, events = _run_stream(tmp_path, model_path, broker,
                               _stream(voices, tmp_path / "stream.wav", wake=True),
                               monkeypatch, logged, answered)
    assert "wake_word_ready" in events
    assert events.index("wake_word") < events.index("answer_ready")
    assert events.count("wake_word") == 1
    heard = [m.json() for m in peer.seen if m.topic == f"{BASE}/heard"]
    assert len(heard) == 1  # the question before the wake word was never heard
    assert len([m for m in peer.seen if m.topic == f"{BASE}/answer"]) == 1


@pytest.mark.slow
def test_run_without_the_wake_word_wakes_nothing(
        broker: Broker, model_path: Path, voices: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, logged: list[str]) -> None:
    peer, events = _run_stream(tmp_path, model_path, broker,
                               _stream(voices, tmp_path / "asleep.wav", wake=False),
                               monkeypatch, logged)
    assert "wake_word_ready" in events and "wake_word" not in events
    assert not [m for m in peer.seen if m.topic in (f"{BASE}/heard", f"{BASE}/answer")]


@pytest.mark.slow
def test_an_unknown_wake_word_model_is_a_one_line_error(tmp_path: Path,
                                                        model_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"llm:\n  model_path: {model_path}\nvoice:\n  enabled: true\n"
                   "  activation: wake\n  wake:\n    engine: micro\n    model: okay_nabuu\n")
    with pytest.raises(ConfigError) as info:
        check_wake(load_settings(cfg))
    assert str(info.value).startswith(f"{cfg}:8: voice.wake.model: unknown wake word model "
                                      "'okay_nabuu'; expected one of okay_nabu, hey_jarvis")
    result = run_cli("--config", str(cfg), "bench", "voice")
    assert result.returncode == 2 and result.stderr.startswith(f"appliance: {cfg}:8: ")
    assert len(result.stderr.splitlines()) == 1
    missing = tmp_path / "mine.json"
    with pytest.raises(WakeWordError, match=f"{re.escape(str(missing))}: no such file"):
        WakeWord(WakeSettings(engine="micro", model=str(missing)))
    missing.write_text(json.dumps({"model": "mine.tflite", "micro": {
        "probability_cutoff": 0.9, "sliding_window_size": 5}}))
    with pytest.raises(WakeWordError, match=r"its model .*mine\.tflite is missing"):
        WakeWord(WakeSettings(engine="micro", model=str(missing)))
    assert VoiceSettings().wake.engine == "vosk"  # vosk hears the wake phrase by default
