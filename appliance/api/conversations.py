"""Earlier turns of Wyoming conversations, so a follow-up question has its context.

Home Assistant sends each utterance on a new connection with its
``conversation_id``; the HTTP APIs send their whole history themselves and
need none of this. Memory is bounded: a few turns of a few conversations,
forgotten after a while.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from appliance.llm.types import Turn

MAX_CONVERSATIONS = 32
MAX_TURNS = 6
FORGET_AFTER_S = 300.0


class Conversations:
    """The last turns of the most recent conversations, each kept a while."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._turns: OrderedDict[str, tuple[float, tuple[Turn, ...]]] = OrderedDict()

    def history(self, conversation_id: str | None) -> tuple[Turn, ...]:
        """The turns so far (none for a new, unknown or forgotten conversation)."""
        if not conversation_id or conversation_id not in self._turns:
            return ()
        at, turns = self._turns[conversation_id]
        if self.clock() - at > FORGET_AFTER_S:
            del self._turns[conversation_id]
            return ()
        return turns

    def add(self, conversation_id: str | None, question: str, answer: str) -> None:
        """Remember one exchange."""
        if not conversation_id:
            return
        turns = (*self.history(conversation_id), Turn("user", question),
                 Turn("assistant", answer))
        self._turns[conversation_id] = (self.clock(), turns[-MAX_TURNS:])
        self._turns.move_to_end(conversation_id)
        while len(self._turns) > MAX_CONVERSATIONS:
            self._turns.popitem(last=False)
