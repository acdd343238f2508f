"""A failure spell of one source: logged once when it starts and once when it ends."""

from __future__ import annotations

from typing import Any

import structlog


class FailureSpell:
    """Whether a source is failing now, and why.

    :meth:`failed` logs ``started`` only on the first failure of a spell,
    :meth:`succeeded` logs ``ended`` only on the first success after one, so
    every spell shows up in the log exactly twice, however long it lasts and
    however many spells there are.
    """

    def __init__(self, log: structlog.stdlib.BoundLogger, started: str, ended: str) -> None:
        self.log = log
        self.started = started
        self.ended = ended
        self.error: str | None = None
        self.since = 0.0

    def failed(self, error: str, now: float, **fields: Any) -> None:
        """Record a failure; the first of a spell is logged as a warning."""
        if self.error is None:
            self.since = now
            self.log.warning(self.started, error=error, **fields)
        self.error = error

    def succeeded(self, now: float, **fields: Any) -> None:
        """Record a success; one that ends a spell is logged with how long it lasted."""
        if self.error is not None:
            self.log.info(self.ended, after_s=round(now - self.since, 1),
                          error=self.error, **fields)
        self.error = None
