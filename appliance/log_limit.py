"""A log line for events that come in floods: at most a few per window, with counts.

A server refuses or drops clients one at a time, and an attacker (or bad luck)
can make that happen thousands of times a second. A line for each would fill
the journal and the SD card faster than anything else the device does, so
each such event goes through one :class:`RateLimitedLog`:

* the first ``burst`` occurrences of a window are logged at once, each as its
  own line, so a lone refusal is seen when it happens;
* the rest of the window are counted, by kind, and summed into one line when
  the window ends (which opens the next window); a quiet window ends it all.

Every line has one shape: the event, ``within_s`` (the window), a count for
each kind of occurrence the line stands for (``busy: 3``, ``slow_header: 40``),
and the fields of the latest of them (``peer``, ``reason``...), as an example.
Kinds are short words, chosen by the caller, that do not clash with its fields.
Nothing counted is lost while the loop runs: the summary comes ``every_s``
later even if the flood has stopped by then.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import structlog

EVERY_S = 5.0
"""The window: at most ``burst`` lines (one by default) in this many seconds."""


class RateLimitedLog:
    """Logs ``event`` on ``log`` at most ``burst`` times per ``every_s``, counting the rest.

    Call :meth:`warning` from the event loop; :meth:`close` when the server stops.
    """

    def __init__(self, log: structlog.stdlib.BoundLogger, event: str, *,
                 every_s: float = EVERY_S, burst: int = 1) -> None:
        self.log, self.event, self.every_s, self.burst = log, event, every_s, burst
        self._counts: Counter[str] = Counter()
        self._example: dict[str, Any] = {}
        self._logged = 0  # lines in the open window
        self._window: asyncio.TimerHandle | None = None  # its end; None: no window is open

    def warning(self, kind: str, **fields: Any) -> None:
        """One more occurrence of ``kind`` (with ``fields``): logged now, or counted."""
        self._counts[kind] += 1
        self._example = fields
        if self._window is None:
            self._open(logged=0)
        if self._logged < self.burst:
            self._logged += 1
            self._emit()

    def close(self) -> None:
        """End the window (what is counted and not yet logged is dropped with it)."""
        if self._window is not None:
            self._window.cancel()
            self._window = None
        self._counts.clear()

    def _open(self, logged: int) -> None:
        self._logged = logged
        self._window = asyncio.get_running_loop().call_later(self.every_s, self._window_ended)

    def _window_ended(self) -> None:
        self._window = None
        if self._counts:  # the summary is the first line of the next window
            self._emit()
            self._open(logged=1)

    def _emit(self) -> None:
        self.log.warning(self.event, within_s=self.every_s, **{**self._counts, **self._example})
        self._counts.clear()
        self._example = {}
