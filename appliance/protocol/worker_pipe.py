"""The messages on the model worker's pipe, one JSON line each.

Both sides use these dataclasses, so the fields cannot drift from the docs.
A line is ``{"type": NAME, "data": {...}}``, much as a Wyoming event is.
Commands go to the worker (:class:`Generate`, :class:`Prefill`, :class:`Cancel`,
:class:`Budget`, :class:`Threads`, :class:`Ping`); events come back
(:class:`Ready`, :class:`ChunkEvent`, :class:`Done`, :class:`Failed`,
:class:`Prefilled`, :class:`ThreadsChanged`, :class:`Pong`, :class:`Fatal`).

>>> decode(encode(Cancel("q1")))
Cancel(id='q1')
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from appliance.errors import ApplianceError, ErrorCode
from appliance.llm.types import ChatRequest, Completion


class ProtocolError(ApplianceError):
    """A line on the worker pipe is not one of the messages below."""


@dataclass(frozen=True)
class Message:
    """Base of every pipe message; ``kind`` is its ``type`` on the wire."""

    kind: ClassVar[str] = ""

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return dataclasses.asdict(self)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Message:
        """Build from a ``data`` object; ``TypeError`` when fields are wrong."""
        return cls(**data)


@dataclass(frozen=True)
class Generate(Message):
    """Answer ``request``, streaming :class:`ChunkEvent` and ending with :class:`Done`."""

    kind: ClassVar[str] = "generate"
    request: ChatRequest

    def to_data(self) -> dict[str, Any]:
        """The request's fields."""
        return {"request": self.request.to_data()}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Generate:
        """The request from its fields."""
        return cls(ChatRequest.from_data(data["request"]))


@dataclass(frozen=True)
class Prefill(Message):
    """Read ``request``'s prompt so far while idle, without answering it (it is not finished)."""

    kind: ClassVar[str] = "prefill"
    request: ChatRequest

    to_data = Generate.to_data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Prefill:
        """The request from its fields."""
        return cls(ChatRequest.from_data(data["request"]))


@dataclass(frozen=True)
class Cancel(Message):
    """Stop generating request ``id`` (``finish_reason: cancelled``)."""

    kind: ClassVar[str] = "cancel"
    id: str


@dataclass(frozen=True)
class Budget(Message):
    """The live token budget (``None``: only each request's own limit).

    ``thinking``: the share of a thinking model's budget at this thermal level;
    ``parallel``: the most answers decoded together at this level (``None``: ``llm.parallel``).
    """

    kind: ClassVar[str] = "budget"
    tokens: int | None
    thinking: float = 1.0
    parallel: int | None = None


@dataclass(frozen=True)
class Threads(Message):
    """Decode and batch threads from the next token on (``None``: the configured count)."""

    kind: ClassVar[str] = "threads"
    n_threads: int | None
    n_threads_batch: int | None


@dataclass(frozen=True)
class Ping(Message):
    """Are you alive? (answered by :class:`Pong` even while generating)."""

    kind: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Ready(Message):
    """The model is loaded; ``n_threads`` decode threads."""

    kind: ClassVar[str] = "ready"
    model: str
    n_threads: int = 0


@dataclass(frozen=True)
class ChunkEvent(Message):
    """Answer text as it is generated."""

    kind: ClassVar[str] = "chunk"
    request_id: str
    seq: int
    delta: str


@dataclass(frozen=True)
class Done(Message):
    """A finished answer."""

    kind: ClassVar[str] = "done"
    completion: Completion

    def to_data(self) -> dict[str, Any]:
        """The completion's fields."""
        return {"completion": self.completion.to_data()}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Done:
        """The completion from its fields."""
        return cls(Completion.from_data(data["completion"]))


@dataclass(frozen=True)
class Failed(Message):
    """Request ``id`` could not be answered; ``error`` says why in one line, ``code`` its kind."""

    kind: ClassVar[str] = "failed"
    id: str
    error: str
    code: ErrorCode = ErrorCode.INTERNAL

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Failed:
        """The failure from its fields; ``ValueError`` for an unknown ``code``."""
        fields = dict(data)
        if "code" in fields:
            fields["code"] = ErrorCode(fields["code"])
        return cls(**fields)


@dataclass(frozen=True)
class Prefilled(Message):
    """A prefill of the question ``text`` finished: ``tokens`` of its prompt are in the KV cache."""

    kind: ClassVar[str] = "prefilled"
    id: str
    tokens: int
    evaluated: int
    text: str = ""


@dataclass(frozen=True)
class ThreadsChanged(Message):
    """Decode threads are now ``n_threads``, because of ``reason``.

    ``reason``: ``configured``, ``heat`` (the thermal level's count), ``contention``
    (fewer while other processes keep the CPU busy) or ``probe`` (one more, on trial);
    see :mod:`appliance.llm.contention`.
    """

    kind: ClassVar[str] = "threads_changed"
    n_threads: int
    reason: str


@dataclass(frozen=True)
class Pong(Message):
    """The answer to :class:`Ping`."""

    kind: ClassVar[str] = "pong"


@dataclass(frozen=True)
class Fatal(Message):
    """The worker cannot start (the model does not load); it exits after this."""

    kind: ClassVar[str] = "fatal"
    error: str


_KINDS: dict[str, type[Message]] = {m.kind: m for m in (
    Generate, Prefill, Cancel, Budget, Threads, Ping, Ready, ChunkEvent, Done, Failed,
    Prefilled, ThreadsChanged, Pong, Fatal)}


def encode(message: Message) -> str:
    """One line (with its newline) for ``message``."""
    return json.dumps({"type": message.kind, "data": message.to_data()},
                      ensure_ascii=False) + "\n"


def decode(line: str | bytes) -> Message:
    """The message on ``line``; :class:`ProtocolError` for anything else."""
    try:
        frame = json.loads(line)
        cls = _KINDS[frame["type"]]
        return cls.from_data(frame.get("data") or {})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        shown = line[:120] if isinstance(line, str) else line[:120].decode(errors="replace")
        raise ProtocolError(f"not a worker message ({type(exc).__name__}: {exc}): "
                            f"{shown!r}") from None
