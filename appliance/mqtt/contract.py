"""The MQTT contract (docs/mqtt.md): topic names, and parsing of every inbound payload.

Parsing is pure and strict: any payload that is not what the contract says
raises :class:`InputError` with a one-line reason, which the bridge publishes
on ``<base>/error``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from appliance.errors import ApplianceError
from appliance.protocol.messages import CONVERSATION_ID

MAX_ID_LENGTH = 64
MAX_DEPTH = 32
"""Deepest nesting of arrays and objects accepted in a payload."""
MAX_NUMBER = 2**64
"""Largest integer accepted (an unsigned 64-bit counter); floats are finite by JSON."""


class InputError(ApplianceError):
    """An inbound message breaks the contract; ``request_id`` when one could be read."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class Topics:
    """All topic names under one base topic (see docs/mqtt.md)."""

    base: str
    status: str
    ask: str
    answer: str
    stream: str
    events: str
    alert: str
    error: str
    state: str
    cancel: str
    heard: str
    heard_partial: str
    confirm: str
    act: str
    action: str
    world: str

    @classmethod
    def under(cls, base: str) -> Topics:
        """The topics of the appliance whose base topic is ``base``."""
        return cls(base, status=f"{base}/status", ask=f"{base}/ask", answer=f"{base}/answer",
                   stream=f"{base}/answer/stream", events=f"{base}/event/+",
                   alert=f"{base}/alert", error=f"{base}/error", state=f"{base}/state",
                   cancel=f"{base}/cmd/cancel", heard=f"{base}/heard",
                   heard_partial=f"{base}/heard/partial", confirm=f"{base}/cmd/confirm",
                   act=f"{base}/cmd/act", action=f"{base}/action", world=f"{base}/world")

    def event(self, name: str) -> str:
        """The topic of sensor event ``name``."""
        return f"{self.base}/event/{name}"


TIERS = ("auto", "local", "remote")


@dataclass(frozen=True)
class Ask:
    """A parsed question; ``tier`` says where it may be answered."""

    text: str
    id: str | None = None
    max_tokens: int | None = None
    tier: str = "auto"
    conversation: str | None = None


def _decode(payload: bytes, max_bytes: int) -> str:
    if len(payload) > max_bytes:
        raise InputError(f"payload of {len(payload)} bytes is over the limit of {max_bytes}")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"payload is not valid UTF-8 (byte {exc.start})") from None


def _no_constant(name: str) -> Any:
    raise InputError(f"invalid JSON: {name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"invalid JSON: {text[:20]} is out of a number's range")
    return value


def _check_data(value: Any, depth: int = 0) -> None:
    """Reject what JSON parsers accept but nothing downstream should see."""
    if depth > MAX_DEPTH:
        raise InputError(f"JSON nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_NUMBER:
            raise InputError("a number is too large (beyond what a sensor can mean)")
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("text holds an unpaired UTF-16 surrogate "
                             "(\\ud800-\\udfff), which is not Unicode text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_data(key, depth + 1)
            _check_data(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_data(item, depth + 1)


_SUSPECT = re.compile(r"\\[uU][dD][89a-fA-F]|\d{20}|[eE][+-]?\d{3}|NaN|Infinity")
"""What the slow, careful path is for: escaped surrogates, long digit runs, huge exponents."""


def _json_object(text: str) -> dict[str, Any]:
    # The common payload (small, plain) goes through the C parser alone; only one that
    # could hide a surrogate, a huge number or deep nesting is parsed with hooks and walked.
    careful = text.count("{") + text.count("[") > MAX_DEPTH or _SUSPECT.search(text)
    try:
        value = (json.loads(text, parse_constant=_no_constant, parse_float=_finite)
                 if careful else json.loads(text))
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                         ) from None
    except RecursionError:
        raise InputError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise InputError(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(f"expected a JSON object, got {type(value).__name__}")
    if careful:
        _check_data(value)
    return value


def _request_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise InputError(f"id must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    return value


def parse_ask(payload: bytes, max_bytes: int, max_tokens_limit: int) -> Ask:
    """A question: ``{"id"?, "text", "max_tokens"?, "tier"?, "conversation"?}`` or plain text.

    ``conversation`` is ``"new"`` (start one) or the id an earlier answer carried.
    """
    text = _decode(payload, max_bytes)
    if not text.lstrip().startswith("{"):
        if not text.strip():
            raise InputError("the question is empty")
        return Ask(text.strip())
    data = _json_object(text)
    raw_id = data.get("id")
    request_id = raw_id if isinstance(raw_id, str) else None
    try:
        request_id = _request_id(raw_id)
        unknown = set(data) - {"id", "text", "max_tokens", "tier", "conversation"}
        if unknown:
            raise InputError(f"unknown field(s): {', '.join(sorted(unknown))}")
        question = data.get("text")
        if not isinstance(question, str):
            raise InputError("text must be a string")
        if not question.strip():
            raise InputError("the question is empty")
        max_tokens = data.get("max_tokens")
        if max_tokens is not None and (
                isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                or not 1 <= max_tokens <= max_tokens_limit):
            raise InputError(f"max_tokens must be an integer from 1 to {max_tokens_limit}")
        tier = data.get("tier", "auto")
        if tier not in TIERS:
            raise InputError(f"tier must be one of {', '.join(TIERS)}")
        conversation = data.get("conversation")
        if conversation is not None and (not isinstance(conversation, str)
                                         or not CONVERSATION_ID.fullmatch(conversation)):
            raise InputError('conversation must be "new" or an id of 1 to 64 letters, digits, '
                             '".", "_", ":" or "-"')
    except InputError as exc:
        raise InputError(str(exc), request_id) from None
    return Ask(question.strip(), request_id, max_tokens, tier, conversation)


def parse_event(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """A sensor event: a JSON object."""
    return _json_object(_decode(payload, max_bytes))


def parse_cancel(payload: bytes, max_bytes: int) -> str:
    """A cancel command ``{"id"}``; returns the id."""
    request_id = _request_id(_json_object(_decode(payload, max_bytes)).get("id"))
    if request_id is None:
        raise InputError("cancel needs an id")
    return request_id


def parse_confirm(payload: bytes, max_bytes: int) -> tuple[str, bool]:
    """A confirmation ``{"id", "yes": bool}``: the request that asked, and the answer."""
    data = _json_object(_decode(payload, max_bytes))
    request_id = _request_id(data.get("id"))
    if request_id is None:
        raise InputError("confirm needs the id of the request that asked")
    yes = data.get("yes")
    if not isinstance(yes, bool):
        raise InputError("confirm needs \"yes\": true or false", request_id)
    return request_id, yes


def parse_act(payload: bytes, max_bytes: int) -> tuple[str | None, str, dict[str, Any]]:
    """A direct proposal ``{"id"?, "name", "args"?}`` (a button, ``appliance act``)."""
    data = _json_object(_decode(payload, max_bytes))
    request_id = _request_id(data.get("id"))
    name, args = data.get("name"), data.get("args", {})
    if not isinstance(name, str) or not name:
        raise InputError("act needs the name of an action", request_id)
    if not isinstance(args, dict):
        raise InputError("args must be a JSON object", request_id)
    return request_id, name, args
