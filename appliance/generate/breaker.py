"""A circuit breaker: a remote that keeps failing is skipped for a while, then tried again."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """Opens after ``failures`` failures in a row, for ``reset_s``; then one try decides.

    While open, :meth:`allow` is ``False``, so requests are answered locally at
    once instead of each waiting for the remote's timeout.
    """

    def __init__(self, failures: int, reset_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures, self.reset_s, self.clock = failures, reset_s, clock
        self._in_a_row = 0
        self._open_until = float("-inf")
        self.last_error: str | None = None

    @property
    def open(self) -> bool:
        """Whether the remote is being skipped right now."""
        return self.clock() < self._open_until

    def allow(self) -> bool:
        """Whether to try the remote for this request."""
        return not self.open

    def succeeded(self) -> None:
        """The remote answered."""
        self._in_a_row = 0
        self._open_until = float("-inf")
        self.last_error = None

    def failed(self, error: str) -> bool:
        """The remote failed; ``True`` when this opened the circuit."""
        self._in_a_row += 1
        self.last_error = error
        if self._in_a_row >= self.failures:
            self._in_a_row = self.failures - 1  # after the pause, one more failure reopens it
            self._open_until = self.clock() + self.reset_s
            return True
        return False

    def describe(self) -> dict[str, object]:
        """For the published state."""
        left = self._open_until - self.clock()
        return {"open": left > 0, "retry_in_s": round(max(0.0, left)), "error": self.last_error}
