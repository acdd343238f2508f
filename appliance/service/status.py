"""What the appliance is doing right now, as published on ``<base>/state``.

The parts report *facts* (the model is loaded, a generation runs, speech is
heard or spoken, the SoC is hot, something is broken); the published
``state`` is derived from them here, in one place, so no two writers can
disagree about it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance import __version__

State = Literal["starting", "idle", "thinking", "listening", "speaking", "throttled",
                "degraded"]


@dataclass
class Status:
    """Mutable facts shared by the parts; :meth:`update` notifies listeners of changes."""

    model: str = ""
    max_tokens: int = 0
    ready: bool = False
    running: bool = False
    hearing: bool = False
    speaking: bool = False
    throttled: bool = False
    queue_depth: int = 0
    temp_c: float | None = None
    throttle_level: str = "normal"
    n_threads: int = 0
    threads_reason: str = "configured"  # configured, heat, contention or probe
    power_w: float | None = None
    fan_on: bool | None = None  # None: no fan
    rss_mb: float = 0.0
    load_1m: float = 0.0
    problems: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    listeners: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def state(self) -> State:
        """The one-word state, derived from the facts (most telling first)."""
        if self.speaking:
            return "speaking"
        if self.running:
            return "thinking"
        if self.hearing:
            return "listening"
        if not self.ready:
            return "degraded" if self.problems.get("model") else "starting"
        if self.problems:
            return "degraded"
        return "throttled" if self.throttled else "idle"

    def update(self, **changes: Any) -> None:
        """Set facts; listeners run once if anything changed."""
        changed = False
        for name, value in changes.items():
            if getattr(self, name) != value:
                setattr(self, name, value)
                changed = True
        if changed:
            self._changed()

    def problem(self, part: str, text: str | None) -> None:
        """Report (``text``) or clear (``None``) what is wrong with ``part``."""
        if self.problems.get(part) != text:
            if text is None:
                self.problems.pop(part, None)
            else:
                self.problems[part] = text
            self._changed()

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    def as_dict(self) -> dict[str, Any]:
        """The ``<base>/state`` payload."""
        return {
            "state": self.state, "queue_depth": self.queue_depth,
            "temp_c": None if self.temp_c is None else round(self.temp_c, 1),
            "throttle_level": self.throttle_level, "max_tokens": self.max_tokens,
            "n_threads": self.n_threads, "threads_reason": self.threads_reason,
            "power_w": self.power_w, "fan_on": self.fan_on,
            "model": self.model, "uptime_s": round(time.monotonic() - self.started),
            "version": __version__, "rss_mb": round(self.rss_mb, 1), "load_1m": self.load_1m,
            "problems": dict(self.problems), **self.extra,
        }
