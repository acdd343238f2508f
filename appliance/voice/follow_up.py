"""Voice follow-ups: after an answer that asks something back, listen without the wake word.

When an answer *invites a reply* (its text ends in a question mark, or an
action waits for a yes), the next utterance needs no wake word or button: it
joins the same conversation. The window is a span of time in which such an
utterance must **begin**:

- it opens only once the answer has been played out, plus ``voice.echo_tail_s``
  (an utterance that begins earlier may be our own voice, the known way for a
  kiosk to transcribe itself), and lasts ``voice.follow_up_s``;
- a follow-up, an intent (``stop``), or an ending phrase (``voice.follow_up_end``,
  "thank you") closes it, and so do a barge-in, the wake word and the talk button
  (those start a new activation, with a new conversation);
- silence lets it time out; an utterance that began inside it still counts when
  vosk finishes with it later (it is judged by its start, like the echo guard);
- at most ``voice.follow_up_max`` follow-ups in a row: a model that ends every
  answer with "Anything else?" must not hold the microphone open forever;
- ``voice.follow_up_s: 0`` turns follow-ups off, and toy mode has them only with
  ``voice.kid_safe_follow_up: true``.

:class:`FollowUps` keeps the window and its conversation; the
:class:`~appliance.voice.controller.VoiceController` tells it what happens, and
it drives the status LED (``show``) and, with a wake word engine, lets vosk
hear the window (``listen``). Its times come from ``clock``, so a test can
drive it with a fake one::

    follow_ups = FollowUps(settings.voice, loop, show=led, listen=open_vosk)
    request = follow_ups.request("날씨", follow_up=False)  # after a wake word: a new conversation
    follow_ups.answered(request.id, answer)               # "Is it for the lettuce?"
    follow_ups.played_out()                               # the speaker went quiet
    follow_ups.is_open(heard.speech_at)                   # this utterance is a reply
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping

from appliance.config.schema import VoiceSettings
from appliance.llm import new_request_id
from appliance.logs import get_logger
from appliance.protocol.answer import Answer
from appliance.protocol.messages import Request
from appliance.service.conversations import new_conversation_id
from appliance.voice.activation import match_intent, normalize

log = get_logger("voice")

QUESTION_MARKS = ("?", "？")
"""What ends a question: ASCII, and the full-width mark of Chinese and Japanese text."""

Reply = tuple[str | None, str | None]
"""``(intent, request)`` of an utterance in the window, as in
:func:`~appliance.voice.activation.route`."""


def invites_reply(answer: Answer) -> bool:
    """Whether ``answer`` asks something back: a question, or an action waiting for a yes."""
    if answer.failed:
        return False
    if answer.action is not None and answer.action.verdict == "awaiting_confirmation":
        return True
    return answer.text.rstrip(" \t\n\"'*)»”").endswith(QUESTION_MARKS)


def window_s(voice: VoiceSettings) -> float:
    """How long a follow-up window lasts with these settings (0: follow-ups are off)."""
    if voice.kid_safe and not voice.kid_safe_follow_up:
        return 0.0
    return voice.follow_up_s


class FollowUps:
    """The follow-up window of one voice controller, and the conversation it continues.

    Called on the loop. ``show(on)`` lights the status LED's ``listening``
    while the window is open; ``listen(seconds)`` lets vosk hear that long
    (a wake word engine otherwise keeps it deaf). Times are ``clock()``
    seconds, the clock of :attr:`~appliance.voice.recognizer.Heard.speech_at`.
    """

    def __init__(self, voice: VoiceSettings, loop: asyncio.AbstractEventLoop, *,
                 show: Callable[[bool], None], listen: Callable[[float], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s(voice)
        self.tail_s = voice.echo_tail_s
        self.max_in_row = voice.follow_up_max
        self.ends = frozenset(normalize(phrase) for phrase in voice.follow_up_end)
        self.loop, self.show, self.listen, self.clock = loop, show, listen, clock
        self.conversation: str | None = None  # the conversation voice requests belong to
        self.in_row = 0  # follow-ups since the last wake word (or button)
        self._asked: str | None = None  # the request whose answer may invite a reply
        self._invited = False  # its answer did: open the window once it has played out
        self._opens, self._closes = math.inf, -math.inf
        self._timers: list[asyncio.TimerHandle] = []

    def request(self, text: str, *, follow_up: bool) -> Request:
        """The voice request for ``text``, in the conversation it belongs to.

        Anything but a follow-up (the wake word, the button, ``activation:
        always``) starts a new conversation and a new count.
        """
        if not follow_up or self.conversation is None:
            self.conversation, self.in_row = new_conversation_id(), 0
        else:
            self.in_row += 1
        self.close()
        self._asked = new_request_id()
        return Request(id=self._asked, source="voice", text=text, conversation=self.conversation)

    def answered(self, request_id: str, answer: Answer, *, speaks: bool = True) -> bool:
        """The answer to ``request_id`` is out; whether a window will follow its speech.

        ``speaks``: it will be played, and the window opens once it has played
        out (:meth:`played_out`); without a speaker, after the tail from now.
        """
        if request_id != self._asked or self.window_s <= 0:
            return False
        self._asked = None
        invites = invites_reply(answer)
        if invites and self.in_row >= self.max_in_row:
            log.info("follow_up_limit", follow_ups=self.in_row, conversation=self.conversation)
            invites = False
        self._invited = invites
        if invites and not speaks:
            self.played_out()
        return invites

    def played_out(self) -> None:
        """Our speech has ended: if an answer invited a reply, open the window after the tail."""
        if not self._invited:
            return
        self._invited = False
        now = self.clock()
        self._opens, self._closes = now + self.tail_s, now + self.tail_s + self.window_s
        self._timers = [self.loop.call_later(self.tail_s, self._opened),
                        self.loop.call_later(self.tail_s + self.window_s, self._timed_out)]

    def is_open(self, at: float) -> bool:
        """Whether an utterance that began at ``at`` is a reply (needs no wake word)."""
        return self._opens <= at <= self._closes

    @property
    def listening(self) -> bool:
        """Whether the window is open now."""
        return self.is_open(self.clock())

    def reply(self, text: str, intents: Mapping[str, str], wake: str) -> Reply | None:
        """What an utterance heard in the window comes to; it closes the window.

        ``(None, request)`` a follow-up, ``(intent, None)`` an intent,
        ``(None, None)`` an ending phrase ("thank you"); ``None`` for the wake
        phrase, which starts a new activation as it always does.
        """
        said = normalize(text)
        if not said or (wake and said.startswith(wake)):
            return None
        intent = match_intent(said, intents)
        ended = intent is not None or said in self.ends
        self.close("intent" if intent is not None else "thanks" if ended else "reply")
        return (intent, None) if ended else (None, said)

    def close(self, reason: str | None = None) -> None:
        """No window now, and none after the speech that plays (a barge-in, a wake word).

        ``reason``: why an open window ended, for the log.
        """
        was_open = self._closes > -math.inf
        self._invited = False
        self._opens, self._closes = math.inf, -math.inf
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        if was_open:
            if reason is not None:
                log.info("follow_up_ended", reason=reason)
            self.show(False)

    def _opened(self) -> None:
        log.info("follow_up_listening", window_s=self.window_s, follow_ups=self.in_row)
        self.show(True)
        self.listen(self.window_s)

    def _timed_out(self) -> None:
        """Silence: the LED goes off (an utterance that began in time still counts)."""
        log.info("follow_up_ended", reason="silence")
        self._timers = []
        self.show(False)
