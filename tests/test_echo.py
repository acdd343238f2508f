"""The assistant hears itself: its spoken answer, fed back into the microphone, is no question.

A real supervisor with the real Korean vosk model, espeak-ng speech and the
SmolLM2 model; the microphone is ``voice.source: stdin``, fed at a
microphone's pace by the test, and it hears the answer as it is played by a
sound device that plays in real time (:func:`tests.speech.speaker_device`).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.bench.broker import LocalBroker
from appliance.config import load_settings, parse_settings
from appliance.protocol.messages import Request
from appliance.service.supervisor import Supervisor
from appliance.voice.controller import VoiceController
from appliance.voice.recognizer import Heard
from appliance.voice.tts import Espeak
from tests.conftest import STORY, device_config
from tests.helpers import eventually_async
from tests.services import Message, Peer, run_supervisor
from tests.speech import (
    PHRASES,
    Microphone,
    korean_model,
    pcm_of,
    share_korean_vosk,
    speak,
    speaker_device,
)

BASE = "appliance/e1"
SUNNY_DAY = "Describe a sunny day in the park in three sentences."


@pytest.fixture(autouse=True)
def _one_vosk_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each supervisor here hears with the one Korean model of the test process."""
    share_korean_vosk(monkeypatch)


def _run(tmp_path: Path, model_path: Path, port: int, voice: dict[str, Any], max_tokens: int,
         action: Callable[[Supervisor, Peer], Awaitable[None]]) -> Peer:
    rest = {"thermal": {"zone_path": tmp_path / "t"},
            "voice": {"enabled": True, "model_path": korean_model(), "grammar": list(PHRASES),
                      "intents": {"멈춰": "stop"}, "tts_voice": "ko", "source": "stdin",
                      "output_device": speaker_device(tmp_path / "played.raw"),
                      "activation": "always", "end_silence_s": 0.4, **voice}}
    cfg = device_config(tmp_path, model_path, port, "e1", max_tokens, rest)
    peer = Peer(port, [f"{BASE}/#"])
    try:
        run_supervisor(load_settings(cfg), cfg, None, lambda s: action(s, peer))
        # its last message, ``offline`` as it closes: all it sent before has come in by then
        peer.wait_for(lambda m: m.topic == f"{BASE}/status" and m.payload == b"offline", 30)
    finally:
        peer.close()
    return peer


def _answers(peer: Peer) -> list[dict[str, object]]:
    return [m.json() for m in peer.seen if m.topic == f"{BASE}/answer"]


def _heard(peer: Peer) -> list[dict[str, object]]:
    return [m.json() for m in peer.seen if m.topic == f"{BASE}/heard"]


def _is_state(state: str) -> Callable[[Message], bool]:
    return lambda m: m.topic == f"{BASE}/state" and m.json()["state"] == state


async def _wait(peer: Peer, predicate: Callable[[Message], bool],
                after: int = 0) -> tuple[int, Message]:
    """The first message from the ``after``-th on that meets ``predicate``, and its index."""
    found = await asyncio.to_thread(peer.wait_for, predicate, 120, after)
    return next(i for i in range(after, len(peer.seen)) if peer.seen[i] is found), found


NOT_HEARD = (-1, None)


async def _heard_within(peer: Peer, mic: Microphone, seconds: float, text: str,
                        after: int) -> tuple[int, Message] | None:
    """The transcript ``text`` from the ``after``-th message on, within ``seconds`` of audio."""
    until = mic.heard_s + seconds

    def find() -> tuple[int, Message] | tuple[int, None] | None:
        with contextlib.suppress(queue.Empty):
            while True:
                peer.seen.append(peer.messages.get_nowait())
        for i in range(after, len(peer.seen)):
            message = peer.seen[i]
            if message.topic == f"{BASE}/heard" and message.json()["text"] == text:
                return i, message
        return NOT_HEARD if mic.heard_s >= until else None

    found = await eventually_async(find, 300, f"{seconds:g} s of audio heard")
    return None if found is NOT_HEARD else found  # type: ignore[return-value]


async def _hear_out(supervisor: Supervisor, mic: Microphone, quiet_s: float) -> None:
    """Let the microphone hear ``quiet_s`` more of the room, end it, and let it all be handled."""
    until = mic.heard_s + quiet_s
    await eventually_async(lambda: mic.heard_s >= until, 300, f"{quiet_s:g} s of quiet heard")
    mic.close()
    assert supervisor.voice is not None and supervisor.voice.voice_in is not None
    voice_in = supervisor.voice.voice_in
    await eventually_async(lambda: voice_in.ended, 60, "end of the microphone's stream")
    await asyncio.sleep(0)  # the last results, posted before it ended, run first
    dispatcher = supervisor.dispatcher
    await eventually_async(lambda: dispatcher.running is None and not len(dispatcher.queue),
                           500, "idle dispatcher")


@pytest.mark.slow
def test_the_spoken_answer_heard_again_is_no_second_request(
        tmp_path: Path, model_path: Path, broker: LocalBroker, mic: Microphone) -> None:

    async def talk(supervisor: Supervisor, peer: Peer) -> None:
        mic.hear_speaker(tmp_path / "played.raw")
        supervisor.dispatcher.submit(Request(id="first", source="voice", text=SUNNY_DAY))
        spoke, _ = await _wait(peer, _is_state("speaking"))
        await _wait(peer, lambda m: m.topic == f"{BASE}/state"
                    and m.json()["state"] != "speaking", after=spoke)
        await _hear_out(supervisor, mic, 3.0)

    peer = _run(tmp_path, model_path, broker.port, {}, 60, talk)
    heard = _heard(peer)
    assert heard and all(h.get("echo_guarded") for h in heard)  # it heard itself, and knew it
    assert [a["id"] for a in _answers(peer)] == ["first"]
    assert (tmp_path / "played.raw").stat().st_size > 3 * 22050 * 2  # seconds of speech


@pytest.mark.slow
def test_with_while_speaking_listen_the_echo_is_a_request(
        tmp_path: Path, model_path: Path, broker: LocalBroker, mic: Microphone) -> None:

    async def talk(supervisor: Supervisor, peer: Peer) -> None:
        mic.hear_speaker(tmp_path / "played.raw")
        supervisor.dispatcher.submit(Request(id="first", source="voice", text=SUNNY_DAY))
        first, _ = await _wait(peer, lambda m: m.topic == f"{BASE}/answer")
        await _wait(peer, lambda m: m.topic == f"{BASE}/answer",
                    after=first + 1)  # the kiosk answered itself

    peer = _run(tmp_path, model_path, broker.port, {"while_speaking": "listen"}, 60,
                talk)
    heard = _heard(peer)
    assert heard and not any(h.get("echo_guarded") for h in heard)
    first, second = _answers(peer)[:2]
    assert first["id"] == "first" and second["source"] == "voice"


@pytest.mark.slow
def test_a_spoken_stop_still_cuts_the_answer_short(
        tmp_path: Path, model_path: Path, broker: LocalBroker, mic: Microphone) -> None:
    """The stop is said in a pause of the answer's speech.

    vosk makes words of whatever it hears, so a stop said over our own voice is
    never an utterance of its own: mixed with the speaker at -26 to -14 dB, it
    was recognized alone 0 times in 18 (docs/voice.md). Our speech pauses only
    when generation or synthesis falls behind; this answer never does, so the
    microphone stops hearing the speaker for the stop and 0.6 s around it. As a
    person would, it says stop again (up to three times) if the first is not
    understood: vosk carries what it heard before into the next utterance.
    """
    stop = pcm_of(speak("멈춰", tmp_path / "stop.wav"))

    async def interrupt(supervisor: Supervisor, peer: Peer) -> None:
        mic.hear_speaker(tmp_path / "played.raw")
        supervisor.dispatcher.submit(Request(id="long", source="voice", text=STORY))
        await _wait(peer, _is_state("speaking"))
        _, echo = await _wait(peer, lambda m: m.topic == f"{BASE}/heard")
        assert echo.json().get("echo_guarded")
        said_at = len(peer.seen)
        for _ in range(3):
            mic.say(stop, in_a_pause=True)
            found = await _heard_within(peer, mic, 4.0, "멈춰", after=said_at)
            if found is not None:
                break
        assert found is not None, "the stop was never understood; heard: " + " | ".join(
            str(m.json()["text"]) for m in peer.seen[said_at:] if m.topic == f"{BASE}/heard")
        heard_at, heard = found  # after said_at: the stop we said, not our voice taken for one
        assert heard.json().get("echo_guarded")  # a barge-in counts while we speak
        await _wait(peer, lambda m: m.topic == f"{BASE}/state"
                    and m.json()["state"] != "speaking", after=heard_at)
        await _hear_out(supervisor, mic, 2.0)

    peer = _run(tmp_path, model_path, broker.port, {}, 400, interrupt)
    (answer,) = _answers(peer)
    assert answer["id"] == "long"
    if answer["finish_reason"] != "cancelled":  # it had all been written: the speech was cut
        assert answer["finish_reason"] == "length"
        spoken = Espeak("ko").synthesize(str(answer["text"])).seconds
        assert (tmp_path / "played.raw").stat().st_size / (2 * 22050) < spoken / 2


def test_the_echo_guard_judges_an_utterance_by_when_it_began(tmp_path: Path) -> None:
    now = [0.0]
    asked: list[str] = []
    loop = asyncio.new_event_loop()

    def controller(extra: str = "") -> VoiceController:
        settings = parse_settings(f"data_dir: {tmp_path}\nvoice:\n  intents: {{멈춰: stop}}\n"
                                  f"  echo_tail_s: 0.8\n{extra}", "t.yaml")
        return VoiceController(settings, loop, submit=lambda r: asked.append(r.text),
                               cancel_running=lambda: None, prefill=lambda _t: None,
                               publish=lambda _m: None, facts=lambda **_f: None,
                               on_error=lambda _e: None, clock=lambda: now[0])

    try:
        voice = controller()
        voice.speaking_changed(True)
        now[0] = 5.0
        voice.speaking_changed(False)  # guarded until 5.8
        now[0] = 6.5  # its end was found after the tail, but it began in it: our voice
        voice.heard(Heard("날씨", True, 6.5, speech_at=5.5))
        voice.heard(Heard("온도", True, 6.5, speech_at=5.9))  # began after the tail
        assert asked == ["온도"]
        voice.speaking_changed(True)
        now[0] = 8.0
        voice.heard(Heard("안녕하세요", True, 8.0, speech_at=7.0))  # while we spoke
        voice.heard(Heard("멈춰", True, 8.0, speech_at=7.5))  # a barge-in: cut, unguarded
        now[0] = 9.0
        voice.heard(Heard("음악 틀어", True, 9.0, speech_at=8.2))
        assert asked == ["온도", "음악 틀어"]
        listening = controller("  while_speaking: listen\n")
        listening.speaking_changed(True)
        listening.heard(Heard("날씨", True, 9.0, speech_at=8.5))
        assert asked[-1] == "날씨"
    finally:
        loop.close()
