"""The console's log tail: the latest log events in a bounded ring, and live subscribers.

:func:`appliance.logs.add_sink` hands the tail every event after the pipeline
redacted its secrets, on whichever thread logged. The tail keeps the latest
:data:`RING` of them, each cut to a few short fields, and passes each to its
subscribers (the Health page's log streams) through their loop. A subscriber
that falls :data:`QUEUE` lines behind is dropped, not buffered without end: its
browser reconnects and starts again from the ring.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from appliance import logs

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
RING = 500
QUEUE = 256
MAX_FIELDS = 16
MAX_CHARS = 500
"""A field's text is cut to this many characters (a traceback shows its start)."""
_SHOWN_FIRST = ("timestamp", "level", "component", "event")


def line_of(seq: int, event: Mapping[str, Any]) -> dict[str, Any]:
    """A log event as the page shows it: numbered, its fields as short text."""
    line: dict[str, Any] = {"seq": seq}
    for key in _SHOWN_FIRST:
        line[key] = str(event.get(key, ""))[:MAX_CHARS]
    extra = [key for key in event if key not in _SHOWN_FIRST and not key.startswith("_")]
    line["fields"] = {key: str(event[key])[:MAX_CHARS] for key in extra[:MAX_FIELDS]}
    return line


def level_of(line: Mapping[str, Any]) -> int:
    """The numeric level of a line (an unknown level counts as info)."""
    return LEVELS.get(str(line.get("level", "")).lower(), LEVELS["info"])


class Subscriber:
    """One live stream: the lines at or above ``minimum`` that came since it subscribed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, minimum: int) -> None:
        self.loop, self.minimum = loop, minimum
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE)
        self.overflowed = False

    def offer(self, line: dict[str, Any]) -> None:
        """Queue ``line`` from any thread (a closed loop is ignored)."""
        if level_of(line) >= self.minimum:
            with suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._put, line)

    def _put(self, line: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(line)
        except asyncio.QueueFull:
            self.overflowed = True


class LogTail:
    """The ring of recent events and its subscribers; :meth:`install` starts it."""

    def __init__(self, size: int = RING) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=size)
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._seq = 0

    def install(self) -> None:
        """Receive every event from now on."""
        logs.add_sink(self.receive)

    def uninstall(self) -> None:
        """Stop receiving events."""
        logs.remove_sink(self.receive)

    def receive(self, event: Mapping[str, Any]) -> None:
        """The log's sink: keep the (already redacted) event and pass it on."""
        with self._lock:
            self._seq += 1
            line = line_of(self._seq, event)
            self._ring.append(line)
            subscribers = tuple(self._subscribers)
        for subscriber in subscribers:
            subscriber.offer(line)

    def recent(self, minimum: int = 0) -> list[dict[str, Any]]:
        """The kept lines at or above ``minimum``, oldest first."""
        with self._lock:
            return [line for line in self._ring if level_of(line) >= minimum]

    @contextmanager
    def subscribe(self, minimum: int) -> Iterator[Subscriber]:
        """A live subscription on the running loop, for the time of the ``with``."""
        subscriber = Subscriber(asyncio.get_running_loop(), minimum)
        with self._lock:
            self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            with self._lock:
                self._subscribers.discard(subscriber)
