"""The world state: the latest reading of every sensor, with the time it arrived.

Every event (``<base>/event/<name>`` and the outside topics of ``world.topics``)
replaces its name's reading. Conditions and prompts read it as
``greenhouse.temperature``; the verifier counts a reading older than a
requirement's ``fresh_s`` as missing. Readings are kept across restarts (in
the journal's database, written behind, at most every ``publish_interval_s``)
and published retained on ``<base>/world`` on change, at the same pace.
Times are wall-clock seconds, since they must mean something after a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Reading:
    """One sensor's latest event and when it arrived (wall clock)."""

    fields: Mapping[str, Any]
    at: float


class WorldStore(Protocol):
    """Where readings survive a restart (the journal)."""

    def world(self) -> dict[str, tuple[dict[str, Any], float]]:
        """Every kept reading."""

    def save_world(self, readings: dict[str, tuple[dict[str, Any], float]]) -> None:
        """Keep these readings (replacing older ones of the same names)."""


class WorldState:
    """The readings, by name; :meth:`flush` writes and publishes what changed."""

    def __init__(self, store: WorldStore | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.clock = store, clock
        self._readings: dict[str, Reading] = {}
        self._dirty: set[str] = set()
        if store is not None:
            for name, (fields, at) in store.world().items():
                self._readings[name] = Reading(fields, at)

    def update(self, name: str, fields: Mapping[str, Any]) -> None:
        """A new reading of ``name``, now."""
        self._readings[name] = Reading(dict(fields), self.clock())
        self._dirty.add(name)

    def get(self, name: str) -> Reading | None:
        """The latest reading of ``name``, if any."""
        return self._readings.get(name)

    def age(self, name: str) -> float | None:
        """Seconds since ``name`` was last read (``None``: never)."""
        reading = self._readings.get(name)
        return None if reading is None else max(0.0, self.clock() - reading.at)

    def fresh(self, max_age_s: float | None = None) -> dict[str, Mapping[str, Any]]:
        """The readings as a mapping for conditions, leaving out those older than ``max_age_s``."""
        now = self.clock()
        return {name: r.fields for name, r in self._readings.items()
                if max_age_s is None or now - r.at <= max_age_s}

    @property
    def changed(self) -> bool:
        """Whether anything changed since the last :meth:`flush`."""
        return bool(self._dirty)

    def flush(self) -> dict[str, Any]:
        """Save what changed; returns the whole state as published on ``<base>/world``."""
        if self._dirty and self.store is not None:
            self.store.save_world({name: (dict(self._readings[name].fields),
                                          self._readings[name].at) for name in self._dirty})
        self._dirty.clear()
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """``{name: {"fields": {...}, "at": unix time, "age_s": seconds}}``."""
        now = self.clock()
        return {name: {"fields": dict(r.fields), "at": round(r.at, 3),
                       "age_s": round(max(0.0, now - r.at), 1)}
                for name, r in sorted(self._readings.items())}
