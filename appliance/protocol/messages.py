"""The unit of work of the dispatcher, and what goes out on MQTT."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal, get_args

from appliance.llm.types import ChatRequest

Source = Literal["voice", "mqtt", "sensor", "api"]
TierWanted = Literal["auto", "local", "remote"]
"""Where a request may be answered (``auto``: the router decides); cf. ``generate.base.Tier``."""
Api = Literal["http", "wyoming", "console"]
"""The API a request came through (``console``: the Talk page, behind its login)."""
ENTRANCES: tuple[str, ...] = (*(s for s in get_args(Source) if s != "api"), *get_args(Api))
"""Every way a request comes in (``Request.entrance``): a source, or the API it came through."""

PRIORITY: dict[Source, int] = {"voice": 0, "api": 1, "mqtt": 1, "sensor": 2}
"""Lower runs first: voice, then questions (MQTT and the HTTP/Wyoming APIs), then sensor rules."""

INTERACTIVE: frozenset[Source] = frozenset({"voice", "api"})
"""Sources a person is waiting on at this moment: they preempt a running sensor rule."""


NEW_CONVERSATION = "new"
"""What an entrance asks for to start a conversation; the answer carries the new id."""

CONVERSATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
"""A conversation id: 1 to 64 letters, digits, ``.``, ``_``, ``:`` or ``-``."""


@dataclass(frozen=True)
class Request:
    """A question for the model, from any source, with where its answer goes.

    ``reply_topic`` is ``None`` for the default (``<base>/answer``, or the
    rule's alert topic); ``correlation`` is the MQTT v5 Correlation Data to
    echo; ``rule`` names the sensor rule that made it; ``tier`` says where it
    may be answered (``auto``: the router decides); ``chat`` carries what an
    API client sends beyond one question (its system prompt, earlier turns,
    sampling, tools as a schema), never journaled; ``api`` says which API an
    ``api`` request came through (what it may do depends on it);
    ``conversation`` names the conversation it continues (its earlier turns
    go with it, and its answer joins them).
    """

    id: str
    source: Source
    text: str
    max_tokens: int | None = None
    reply_topic: str | None = None
    correlation: bytes | None = None
    rule: str | None = None
    client: str = ""
    attempts: int = 0
    tier: TierWanted = "auto"
    chat: ChatRequest | None = None
    api: Api | None = None
    conversation: str | None = None

    @property
    def entrance(self) -> str:
        """Where it came in: its source, or the API it came through (``api`` if not said)."""
        return self.api or self.source

    @property
    def priority(self) -> int:
        """Queue priority (lower first)."""
        return PRIORITY[self.source]


@dataclass(frozen=True)
class Outgoing:
    """A message to publish, with the MQTT v5 properties it carries.

    ``correlation`` becomes Correlation Data; ``response_topic`` and
    ``user_properties`` are for asks we send ourselves (escalation, handing a
    fleet ask on) and are not kept in the outbox.
    """

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    correlation: bytes | None = None
    response_topic: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


def error_message(error_topic: str, topic: str, text: str,
                  request_id: str | None = None) -> Outgoing:
    """The ``<base>/error`` message about ``topic``: ``{"id"?, "topic", "error"}``."""
    body: dict[str, str] = {"topic": topic, "error": text}
    if request_id is not None:
        body = {"id": request_id, **body}
    return Outgoing(error_topic, json.dumps(body).encode())
