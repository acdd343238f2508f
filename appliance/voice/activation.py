"""Which utterances are meant for the appliance: always, after a wake phrase, or push-to-talk."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

RELEASE_S = 2.0
"""After the talk button goes up, an utterance that begins within this still counts."""


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation."""
    return " ".join(text.lower().strip(" .,!?;:").split())


class Activation:
    """Decides whether an utterance is addressed to us, and what of it to answer.

    ``always``: every utterance. ``wake``: an utterance that starts with the wake
    phrase (its rest is the request), or the wake phrase alone, which opens a
    window of ``window_s`` for the next utterance. ``button``: only utterances
    heard while the button is held (:meth:`press` / :meth:`release`). With no
    wake phrase (a wake word engine hears it, not vosk), ``wake`` admits only
    what follows :meth:`open_window`.
    """

    def __init__(self, mode: str, wake_phrase: str = "", window_s: float = 8.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.mode, self.wake, self.window_s, self.clock = mode, normalize(wake_phrase), \
            window_s, clock
        self._open_until = float("-inf")
        self._held = False

    def press(self) -> None:
        """The push-to-talk button went down."""
        self._held = True

    def release(self) -> None:
        """The push-to-talk button went up (an utterance under way still counts)."""
        self._open_until = self.clock() + RELEASE_S
        self._held = False

    def open_window(self) -> None:
        """The wake phrase was heard alone: the next utterance within the window counts."""
        self._open_until = self.clock() + self.window_s

    def peek(self, text: str) -> str | None:
        """What :meth:`admit` would take from ``text`` (a partial), changing nothing."""
        said = normalize(text)
        if not said or self.mode == "always":
            return said or None
        now = self.clock()
        if self.mode == "button":
            return said if self._held or now <= self._open_until else None
        if self.wake and said.startswith(self.wake):
            return said[len(self.wake):].strip() or None
        return said if now <= self._open_until else None

    def admit(self, text: str) -> str | None:
        """The request in ``text``, or ``None`` when it is not for us."""
        said = normalize(text)
        if not said:
            return None
        if self.mode == "always":
            return said
        now = self.clock()
        if self.mode == "button":
            return said if self._held or now <= self._open_until else None
        if self.wake and said.startswith(self.wake):
            rest = said[len(self.wake):].strip()
            if rest:
                return rest
            self.open_window()
            return None
        if now <= self._open_until:
            self._open_until = float("-inf")
            return said
        return None


def match_intent(text: str, intents: Mapping[str, str]) -> str | None:
    """The intent that the phrase ``text`` names, if any (whole-utterance match)."""
    said = normalize(text)
    for phrase, intent in intents.items():
        if normalize(phrase) == said:
            return intent
    return None


def route(gate: Activation, text: str, intents: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``(intent, request)`` for an utterance: an intent, or a request for the model.

    An intent works without the wake phrase or button ("stop" must interrupt at
    once); an intent after the wake phrase works too. Both are ``None`` when the
    utterance is not for us.
    """
    intent = match_intent(text, intents)
    if intent is not None:
        return intent, None
    request = gate.admit(text)
    if request is None:
        return None, None
    intent = match_intent(request, intents)
    return (intent, None) if intent is not None else (None, request)


def prefill_text(gate: Activation, partial: str, intents: Mapping[str, str]) -> str | None:
    """What of a partial transcript the model may read ahead: the request so far.

    ``None`` when it is not addressed to us (yet) or is an intent, which the
    model never answers.
    """
    if match_intent(partial, intents) is not None:
        return None
    request = gate.peek(partial)
    if request is None or match_intent(request, intents) is not None:
        return None
    return request
