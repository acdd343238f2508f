"""Voice in ``appliance run``: heard speech to an intent or a request, and who may interrupt.

The :class:`VoiceController` owns what happens between the microphone and the
dispatcher: transcripts go out on ``heard`` (never in toy mode), the wake
gate (the wake phrase heard by vosk, or the wake word heard by microWakeWord)
or the talk button decides what is addressed to us, intents act at once,
partial transcripts let the model read the question while it is still being
spoken (prefill), and the **echo guard** keeps the appliance from answering
itself: an utterance that began while an answer was being spoken, or within
``voice.echo_tail_s`` after, may be our own voice, and only a barge-in in it
counts (the ``stop`` intent, the wake phrase or wake word, or the talk
button). A barge-in cuts our speech, so what follows it is not guarded. With
``voice.while_speaking: listen`` (hardware echo cancellation) everything
heard counts, as when it is quiet.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from gpiozero import Button, GPIOZeroError
from gpiozero.pins import Factory

from appliance.config import Settings
from appliance.logs import get_logger
from appliance.mqtt.contract import Topics
from appliance.protocol.answer import Answer
from appliance.protocol.messages import Outgoing, Request
from appliance.voice.activation import (
    RELEASE_S,
    Activation,
    match_intent,
    normalize,
    prefill_text,
    route,
)
from appliance.voice.follow_up import FollowUps
from appliance.voice.hearing import Woke, uses_wake_word
from appliance.voice.recognizer import Heard
from appliance.voice.service import Loudspeaker, VoiceInput, source_name

log = get_logger("voice")

VOLUME_STEP = 0.2


class VoiceController:
    """Wires voice input, the speaker and the talk button to the rest of the appliance.

    ``submit(request)`` queues a voice request, ``cancel_running()`` stops the
    answer being generated, ``prefill(text)`` lets an idle model read a
    question so far, ``publish`` sends transcripts, ``facts(**kw)`` reports
    ``hearing``/``speaking``, ``on_intent(name, say)`` hears intents that are not
    the controller's own (yes/no answers to a confirmation). :meth:`answered`
    hears every answer, for follow-ups (appliance/voice/follow_up.py).
    """

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop, *,
                 submit: Callable[[Request], None], cancel_running: Callable[[], None],
                 prefill: Callable[[str], None], publish: Callable[[Outgoing], None],
                 facts: Callable[..., None], on_error: Callable[[str], None],
                 on_intent: Callable[[str, Callable[[str], None]], None] = lambda _i, _s: None,
                 pin_factory: Factory | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.loop = settings, loop
        self.voice = voice = settings.voice
        self.topics = Topics.under(settings.base_topic)
        self.submit, self.cancel_running, self.prefill = submit, cancel_running, prefill
        self.publish, self.facts, self._on_error = publish, facts, on_error
        self.on_intent = on_intent
        self.pin_factory = pin_factory
        self.clock = clock
        # With a wake word engine the wake word opens the window; vosk never hears it.
        self.activation = Activation(voice.activation,
                                     "" if uses_wake_word(voice) else voice.wake_phrase,
                                     voice.wake_window_s)
        self.speaker: Loudspeaker | None = None
        self.voice_in: VoiceInput | None = None
        self.talk_button: Button | None = None
        self.failed = False
        self._speaking = False
        self._echo_until = float("-inf")  # sound that begins before this may be our voice
        self.follow_ups = FollowUps(  # after an answer that asks: listen without the wake word
            voice, loop, show=lambda on: facts(hearing=on), clock=clock,
            listen=lambda s: None if self.voice_in is None else self.voice_in.opening.open_for(s))

    # --- parts ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the speaker, the talk button and listening, as configured."""
        loop = self.loop
        if self.voice.tts != "none":
            self.speaker = Loudspeaker(
                self.settings, lambda on: loop.call_soon_threadsafe(self.speaking_changed, on),
                lambda message: loop.call_soon_threadsafe(self.on_error, message))
        self._start_talk_button()
        self.voice_in = VoiceInput(self.voice, loop, self.heard, self.on_error, self.woke)
        self.voice_in.start()

    @property
    def alive(self) -> bool:
        """Every voice thread runs, or ended for a reason already reported."""
        parts = [p for p in (self.voice_in, self.speaker) if p is not None]
        return all(p.alive for p in parts)

    def _start_talk_button(self) -> None:
        """Push-to-talk: pressing interrupts (barge-in) and opens the gate until release."""
        pin = self.voice.button
        if pin is None:
            return
        try:
            button = Button(pin, pin_factory=self.pin_factory)
        except GPIOZeroError as exc:
            log.warning("no_talk_button", reason=str(exc))
            return
        button.when_pressed = lambda: self.loop.call_soon_threadsafe(self._talk_pressed)
        button.when_released = lambda: self.loop.call_soon_threadsafe(self._talk_released)
        self.talk_button = button

    def _talk_pressed(self) -> None:
        self.obey("stop")
        self.activation.press()
        self._hold_open("button", True)

    def _talk_released(self) -> None:
        self.activation.release()
        self._hold_open("button", False)
        if self.voice_in is not None:
            self.voice_in.opening.open_for(RELEASE_S)

    def _hold_open(self, reason: str, on: bool) -> None:
        """Keep vosk listening (it otherwise waits for the wake word engine)."""
        if self.voice_in is not None:
            self.voice_in.opening.hold(reason, on)

    # --- what was heard ------------------------------------------------------------------
    @property
    def echo_guarded(self) -> bool:
        """Whether what is heard now may be our own voice (and only a barge-in counts)."""
        return self._echoes(self.clock())

    def _echoes(self, at: float) -> bool:
        """Whether sound that began at ``at`` may be our own voice."""
        if self.voice.while_speaking == "listen":
            return False
        return self._speaking or at < self._echo_until

    def _guarded(self, heard: Heard) -> bool:
        """An utterance is judged by when it began, not by when vosk finished with it.

        The end of an utterance is found ``end_silence_s`` after its last word,
        which may be after our speech and its tail have ended.
        """
        return self.echo_guarded or (heard.speech_at is not None
                                     and self._echoes(heard.speech_at))

    def woke(self, woke: Woke) -> None:
        """The wake word engine heard the wake word (on the loop): a barge-in, then listen."""
        if self.echo_guarded:
            self.obey("stop")
        self.follow_ups.close("wake_word")
        self.activation.open_window()

    def heard(self, heard: Heard) -> None:
        """A partial or final transcript (on the loop)."""
        private = self.voice.kid_safe  # toy mode: transcripts never leave the device
        guarded = self._guarded(heard)
        self.facts(hearing=(not heard.final and not guarded) or self.follow_ups.listening)
        if not heard.final:
            if not private:
                self._publish(self.topics.heard_partial, {"text": heard.text,
                                                          "source": source_name(self.voice)},
                              qos=0)
            if not guarded:
                self._prefill_partial(heard.text)
            return
        record = {"text": heard.text, "ms": heard.ms, "source": source_name(self.voice)}
        if guarded:
            record["echo_guarded"] = True
        if not private:
            self._publish(self.topics.heard, record)
            if self.voice.keep_transcripts:
                with (self.settings.data_dir / "transcripts.jsonl").open("a") as kept:
                    kept.write(json.dumps(record, ensure_ascii=False) + "\n")
        if guarded:
            self._barge_in_only(heard.text)
            return
        reply = (self.follow_ups.reply(heard.text, self.voice.intents, self.activation.wake)
                 if self.follow_ups.is_open(heard.speech_at or self.clock()) else None)
        intent, request = reply or route(self.activation, heard.text, self.voice.intents)
        if intent is not None:
            self.obey(intent)
        if request is not None:
            self.submit(self.follow_ups.request(request, follow_up=reply is not None))

    def answered(self, request: Request, answer: Answer) -> None:
        """An answer went out (a dispatcher listener): a reply to it may need no wake word."""
        self.follow_ups.answered(request.id, answer,
                                 speaks=self.speaker is not None and not self.failed)

    def _barge_in_only(self, text: str) -> None:
        """While we speak: ``stop`` stops, the wake phrase stops and listens; the rest is echo."""
        said = normalize(text)
        wake = self.activation.wake
        if match_intent(text, self.voice.intents) == "stop":
            self.obey("stop")
        elif wake and said.startswith(wake):
            self.obey("stop")
            intent, request = route(Activation("wake", wake, self.voice.wake_window_s),
                                    text, self.voice.intents)
            if intent is not None:
                self.obey(intent)
            if request is not None:
                self.submit(self.follow_ups.request(request, follow_up=False))
            else:
                self.activation.open_window()
        else:
            log.info("echo_ignored", chars=len(text))

    def _prefill_partial(self, text: str) -> None:
        """Hand the question so far to an idle model, if it is addressed to us and no intent."""
        if not self.voice.prefill:
            return
        request = prefill_text(self.activation, text, self.voice.intents)
        if request is not None:
            self.prefill(request)

    # --- intents -------------------------------------------------------------------------
    def obey(self, intent: str) -> None:
        """An intent: do it without the model."""
        log.info("intent", intent=intent)
        speaker = self.speaker
        if intent == "stop":  # barge-in: our voice is cut, so what follows is not guarded
            if speaker is not None:
                speaker.stop()
            self._speaking = False
            self._echo_until = min(self._echo_until, self.clock())
            self.follow_ups.close("stop")
            self.cancel_running()
        elif intent == "repeat" and speaker is not None:
            speaker.say(speaker.last_answer)
        elif intent in ("volume_up", "volume_down") and speaker is not None:
            volume = speaker.change_volume(VOLUME_STEP if intent == "volume_up"
                                           else -VOLUME_STEP)
            log.info("volume", volume=volume)
        else:
            self.on_intent(intent, self.say)

    def on_error(self, message: str) -> None:
        """Speech cannot work (on the loop): remember it, and pass it on."""
        self.failed = True
        self._on_error(message)

    def say(self, text: str) -> None:
        """Speak ``text`` (a refusal or a question of our own), if there is a speaker."""
        if self.speaker is not None:
            self.speaker.say(text)

    # --- the answers' way out (VoiceOut): to the speaker, if one started ----------------
    def feed(self, request_id: str, delta: str) -> None:
        """More of the answer to ``request_id``."""
        if self.speaker is not None:
            self.speaker.feed(request_id, delta)

    def finish(self, request_id: str) -> None:
        """The answer to ``request_id`` is complete."""
        if self.speaker is not None:
            self.speaker.finish(request_id)

    def restart(self, request_id: str) -> None:
        """What was fed for ``request_id`` is void; the answer starts over."""
        if self.speaker is not None:
            self.speaker.restart(request_id)

    def speaking_changed(self, on: bool) -> None:
        """The speaker started (``True``) or stopped making sound (on the loop)."""
        if on:
            self._echo_until = float("inf")
        elif self._speaking:  # played out (a cut by barge-in has already ended the guard)
            self._echo_until = self.clock() + self.voice.echo_tail_s
            self.follow_ups.played_out()  # an answer that asked: listen after the tail
        self._speaking = on
        self._hold_open("speaking", on)  # a spoken stop must be heard while we speak
        self.facts(speaking=on)

    def _publish(self, topic: str, body: dict[str, Any], qos: int = 1) -> None:
        self.publish(Outgoing(topic, json.dumps(body, ensure_ascii=False).encode(), qos=qos))

    def close(self) -> None:
        """Stop listening and speaking, release the button."""
        if self.voice_in is not None:
            self.voice_in.stop()
        if self.talk_button is not None:
            self.talk_button.close()
        if self.speaker is not None:
            self.speaker.close()
