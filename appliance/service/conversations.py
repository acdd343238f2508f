"""Conversations: the earlier turns that a follow-up question is asked with.

One idea of a conversation for every entrance that names one: an MQTT ask's
``"conversation"`` field, a Wyoming ``handle``'s ``conversation_id`` (the HTTP
APIs send their own history instead). A conversation is its id, its turns and
when it was last used. It is forgotten ``conversation.idle_s`` after that; at
most ``conversation.max_kept`` are kept (the least recently used goes first),
each with at most ``conversation.max_turns`` turns. The model itself drops the
oldest turns sooner when they would not fit ``llm.n_ctx`` with the question and
its answer budget.

With a journal, conversations survive a restart. Toy mode passes none: a
child's conversation is never written to disk, and is gone after its idle time.

Earlier questions and answers go back to the model as plain text, never as
instructions: they are turns of the chat template, with special-token parsing
off like every outside text.

    conversations = Conversations(settings.conversation, journal)
    conversation = conversations.resolve("new")          # a fresh id
    conversations.record(conversation, "What is 2+2?", "4.")
    conversations.history(conversation)                  # (user, assistant) turns
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from appliance.config.schema import ConversationSettings
from appliance.errors import ApplianceError
from appliance.llm.types import Turn
from appliance.logs import get_logger
from appliance.protocol.messages import NEW_CONVERSATION

log = get_logger("conversations")


@dataclass(frozen=True)
class Conversation:
    """One conversation: its turns so far, and when it was last used (wall clock, seconds)."""

    id: str
    turns: tuple[Turn, ...]
    last_used: float


class Keeper(Protocol):
    """Where conversations outlive a restart (the journal)."""

    def keep_conversation(self, conversation: Conversation) -> None:
        """Store or replace ``conversation``."""

    def forget_conversation(self, conversation_id: str) -> None:
        """Drop it."""

    def conversations(self) -> list[Conversation]:
        """Every stored conversation."""


def new_conversation_id() -> str:
    """A fresh, unguessable conversation id."""
    return f"c-{secrets.token_hex(6)}"


class Conversations:
    """The live conversations, bounded in number, turns and age."""

    def __init__(self, settings: ConversationSettings, keeper: Keeper | None = None,
                 clock: Callable[[], float] = time.time, max_chars: int = 1 << 16) -> None:
        self.settings, self.keeper, self.clock = settings, keeper, clock
        self.max_chars = max_chars  # more text than the model's context holds is never read
        self._live: OrderedDict[str, Conversation] = OrderedDict()
        if keeper is not None:
            for conversation in sorted(keeper.conversations(), key=lambda c: c.last_used):
                self._live[conversation.id] = conversation
            self._expire()

    @staticmethod
    def resolve(asked: str | None) -> str | None:
        """The id a request belongs to: a fresh one for ``"new"``, else ``asked``."""
        return new_conversation_id() if asked == NEW_CONVERSATION else asked

    def history(self, conversation_id: str | None) -> tuple[Turn, ...]:
        """The turns so far (none for no, a new, or a forgotten conversation)."""
        if conversation_id is None:
            return ()
        self._expire()
        conversation = self._live.get(conversation_id)
        return conversation.turns if conversation is not None else ()

    def record(self, conversation_id: str, question: str, answer: str) -> None:
        """Add one exchange, and make it the most recently used conversation."""
        turns = (*self.history(conversation_id), Turn("user", question),
                 Turn("assistant", answer))[-self.settings.max_turns:]
        while len(turns) > 2 and sum(len(t.content) for t in turns) > self.max_chars:
            turns = turns[2:]  # the oldest exchange first, as the model would drop it
        conversation = Conversation(conversation_id, turns, self.clock())
        self._live[conversation_id] = conversation
        self._live.move_to_end(conversation_id)
        if self.keeper is not None:
            try:
                self.keeper.keep_conversation(conversation)
            except ApplianceError as exc:  # kept in memory; only a restart would forget it
                log.warning("conversation_not_kept", error=str(exc))
        while len(self._live) > self.settings.max_kept:
            self._forget(next(iter(self._live)))

    def __len__(self) -> int:
        self._expire()
        return len(self._live)

    def _expire(self) -> None:
        """Forget every conversation idle for longer than ``idle_s``."""
        oldest = self.clock() - self.settings.idle_s
        for conversation_id in [c.id for c in self._live.values() if c.last_used < oldest]:
            self._forget(conversation_id)

    def _forget(self, conversation_id: str) -> None:
        self._live.pop(conversation_id, None)
        if self.keeper is not None:
            try:
                self.keeper.forget_conversation(conversation_id)
            except ApplianceError as exc:
                log.warning("conversation_not_forgotten", error=str(exc))
        log.info("conversation_forgotten", conversation=conversation_id)
