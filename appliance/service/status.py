"""What the appliance is doing right now, as published on ``<base>/state``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance import __version__

State = Literal["starting", "idle", "thinking", "listening", "speaking", "throttled"]


@dataclass
class Status:
    """Mutable status shared by the parts; :meth:`update` notifies listeners of changes."""

    model: str = ""
    max_tokens: int = 0
    state: State = "starting"
    queue_depth: int = 0
    temp_c: float | None = None
    throttle_level: str = "normal"
    rss_mb: float = 0.0
    load_1m: float = 0.0
    started: float = field(default_factory=time.monotonic)
    listeners: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def update(self, **changes: Any) -> None:
        """Set fields; listeners run once if anything changed."""
        changed = False
        for name, value in changes.items():
            if getattr(self, name) != value:
                setattr(self, name, value)
                changed = True
        if changed:
            for listener in self.listeners:
                listener()

    def as_dict(self) -> dict[str, Any]:
        """The ``<base>/state`` payload."""
        return {
            "state": self.state, "queue_depth": self.queue_depth,
            "temp_c": None if self.temp_c is None else round(self.temp_c, 1),
            "throttle_level": self.throttle_level, "max_tokens": self.max_tokens,
            "model": self.model, "uptime_s": round(time.monotonic() - self.started),
            "version": __version__, "rss_mb": round(self.rss_mb, 1), "load_1m": self.load_1m,
        }
