"""A restarted generation is spoken from its start: the old take's pieces are dropped and cut.

The dispatcher's stream calls ``Loudspeaker.restart(request_id)`` when a request's
generation starts over (a retry after a worker restart, a fallback from a
remote tier). Real espeak-ng and aplay; ALSA's file plugin stands in for the
sound card, and a new stream truncates its file, so the file holds what the
last stream played.
"""

from __future__ import annotations

import queue
from pathlib import Path

from appliance.config import Settings, load_settings
from appliance.llm import Chunk
from appliance.mqtt.contract import Topics
from appliance.protocol.answer import Answer
from appliance.protocol.messages import Outgoing, Request
from appliance.service.outlets import Outlets
from appliance.voice.pieces import SpokenAnswer
from appliance.voice.service import Loudspeaker
from appliance.voice.tts import Espeak

OLD = ("This is the answer as the first attempt wrote it, and it goes on for a while. "
       "Here is a second sentence of it that must never be heard.")
NEW = "The answer starts over. It is spoken from its start."


def _settings(tmp_path: Path) -> tuple[Settings, Path]:
    """espeak-ng at full volume into a file, and that file."""
    played = tmp_path / "speaker.raw"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"voice:\n  tts_voice: en\n  volume: 1.0\n"
                   f"  output_device: \"file:'{played}',raw\"\n")
    return load_settings(cfg), played


def _spoke_only(settings: Settings, played: Path, text: str) -> None:
    """What the last stream played is ``text``, piece by piece, and nothing else."""
    answer = SpokenAnswer(settings.voice)
    pieces = [*answer.feed(text), *answer.flush()]
    espeak = Espeak("en")
    expected = b"".join(espeak.synthesize(piece).pcm for piece in pieces)
    sound = played.read_bytes()
    assert len(pieces) >= 2 and sound[: len(expected)] == expected
    assert not any(sound[len(expected):])  # then only the device's padding to a period


def test_a_restarted_answer_is_spoken_from_its_start_without_the_old_pieces(
        tmp_path: Path) -> None:
    settings, played = _settings(tmp_path)
    events: queue.Queue[bool] = queue.Queue()
    speaker = Loudspeaker(settings, events.put)
    try:
        speaker.feed("r1", OLD)  # its first pieces are complete: they are queued at once
        assert events.get(timeout=30) is True  # the old take is playing
        speaker.restart("r1")
        assert events.get(timeout=30) is False  # cut at once
        speaker.feed("r1", NEW[:30])
        speaker.restart("another")  # nothing of it is spoken: r1 is left alone
        speaker.feed("r1", NEW[30:])
        speaker.finish("r1")
        assert [events.get(timeout=30), events.get(timeout=30)] == [True, False]
    finally:
        speaker.close()
    _spoke_only(settings, played, NEW)
    assert speaker.last_answer == NEW


def test_restart_before_anything_was_said_and_after_the_end_changes_nothing(
        tmp_path: Path) -> None:
    settings, played = _settings(tmp_path)
    events: queue.Queue[bool] = queue.Queue()
    speaker = Loudspeaker(settings, events.put)
    try:
        speaker.restart("r1")  # nothing fed yet
        speaker.say(NEW)
        speaker.restart("say")  # already finished: it plays out
        assert [events.get(timeout=30), events.get(timeout=30)] == [True, False]
    finally:
        speaker.close()
    assert len(played.read_bytes()) / (2 * 22050) > 1.5


class _Mqtt:
    """Where the outlets' MQTT messages go (the bridge's place): kept, to be looked at."""

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []

    def publish(self, message: Outgoing) -> None:
        self.sent.append(message)

    def deliver(self, request_id: str | None, messages: list[Outgoing]) -> None:
        self.sent.extend(messages)


def _through_outlets(tmp_path: Path, again: str) -> None:
    """A voice answer streams through the real outlets into the speaker, then starts over.

    ``again``: ``restart`` (the router falls back: ``RequestStream.restart()``) or
    ``retry`` (the dispatcher runs the request again: a new stream of it).
    """
    settings, played = _settings(tmp_path)
    events: queue.Queue[bool] = queue.Queue()
    speaker = Loudspeaker(settings, events.put)
    mqtt = _Mqtt()
    outlets = Outlets(mqtt, Topics.under("appliance/t"), stream=True, kid_safe=False,
                      device_id="t")
    outlets.speaker = speaker
    request = Request(id="v1", source="voice", text="how is the weather")
    try:
        stream = outlets.stream(request)
        stream(Chunk("v1", 0, OLD))
        assert events.get(timeout=30) is True
        if again == "restart":
            stream.restart()
        else:
            stream = outlets.stream(request)
        assert events.get(timeout=30) is False
        stream(Chunk("v1", 0, NEW))
        outlets.answer(request, Answer("v1", "voice", NEW, "stop"), "appliance/t/answer")
        assert [events.get(timeout=30), events.get(timeout=30)] == [True, False]
    finally:
        speaker.close()
    _spoke_only(settings, played, NEW)
    assert b'"restart": true' in mqtt.sent[1].payload  # the MQTT stream says so too


def test_a_fallback_through_the_outlets_is_spoken_from_its_start(tmp_path: Path) -> None:
    _through_outlets(tmp_path, "restart")


def test_a_retried_attempt_through_the_outlets_is_spoken_from_its_start(
        tmp_path: Path) -> None:
    _through_outlets(tmp_path, "retry")
