"""The world state: the latest reading of every sensor, with the time it arrived.

Every event (``<base>/event/<name>`` and the outside topics of ``world.topics``)
replaces its name's reading. Conditions and prompts read it as
``greenhouse.temperature``; the verifier counts a reading older than a
requirement's ``fresh_s`` as missing. Readings are kept across restarts (in
the journal's database, written behind, at most every ``publish_interval_s``)
and published retained on ``<base>/world`` on change, at the same pace.

Ages are measured on the monotonic clock, never the wall clock: NTP may set
the wall clock back, and a Pi without a real-time clock boots to an older
time, and either would keep a reading "fresh" for as long as the clock is
behind it. Each reading is stamped with the kernel's boot id
(``/proc/sys/kernel/random/boot_id``) and the monotonic time, both kept with
it; a reading from another boot, or stamped ahead of the monotonic clock, has
no knowable age and is stale (:data:`UNKNOWN_AGE`). The wall-clock time is
kept beside them for display (``at`` in the snapshot) and nothing else.

The world also remembers when each action last ran (:meth:`WorldState.ran`),
in the same journal, so that a cooldown outlives a restart.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appliance.errors import ApplianceError
from appliance.logs import get_logger

log = get_logger("world")

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
UNKNOWN_AGE = math.inf
"""The age of a reading from another boot or from ahead of the clock: older than any limit."""


def read_boot_id(path: Path = BOOT_ID) -> str:
    """The id of the running boot; without one, a new id per start (each restart a reboot)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        text = ""
    return text or f"unknown-{uuid.uuid4()}"


@dataclass(frozen=True)
class Stamp:
    """When something happened: ``at`` (wall clock, for display), ``mono`` in boot ``boot``."""

    at: float
    mono: float
    boot: str


@dataclass(frozen=True)
class Reading:
    """One sensor's latest event and when it arrived."""

    fields: Mapping[str, Any]
    stamp: Stamp


class WorldStore(Protocol):
    """Where readings and the actions' last runs survive a restart (the journal)."""

    def world(self) -> dict[str, tuple[dict[str, Any], Stamp]]:
        """Every kept reading."""

    def save_world(self, readings: dict[str, tuple[dict[str, Any], Stamp]]) -> None:
        """Keep these readings (replacing older ones of the same names)."""

    def runs(self) -> dict[str, Stamp]:
        """When each action last ran."""

    def save_run(self, name: str, stamp: Stamp) -> None:
        """Keep that action ``name`` ran at ``stamp``."""


class WorldState:
    """The readings, by name; :meth:`flush` writes and publishes what changed.

    ``clock`` is the monotonic clock, ``wall`` the wall clock (display only),
    ``boot_id`` says which boot this is (a test passes another to simulate a
    reboot).
    """

    def __init__(self, store: WorldStore | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 boot_id: Callable[[], str] = read_boot_id) -> None:
        self.store, self.clock, self.wall = store, clock, wall
        self.boot = boot_id()
        self._readings: dict[str, Reading] = {}
        self._runs: dict[str, Stamp] = {}
        self._dirty: set[str] = set()
        if store is not None:
            for name, (fields, stamp) in store.world().items():
                self._readings[name] = Reading(fields, stamp)
            self._runs = store.runs()

    def stamp(self) -> Stamp:
        """Now, on all three counts."""
        return Stamp(self.wall(), self.clock(), self.boot)

    def _age(self, stamp: Stamp) -> float:
        """Seconds since ``stamp``; :data:`UNKNOWN_AGE` if it is from another boot or ahead."""
        age = self.clock() - stamp.mono
        return age if stamp.boot == self.boot and age >= 0 else UNKNOWN_AGE

    def update(self, name: str, fields: Mapping[str, Any]) -> None:
        """A new reading of ``name``, now."""
        self._readings[name] = Reading(dict(fields), self.stamp())
        self._dirty.add(name)

    def get(self, name: str) -> Reading | None:
        """The latest reading of ``name``, if any."""
        return self._readings.get(name)

    def age(self, name: str) -> float | None:
        """Seconds since ``name`` was last read (``None``: never; :data:`UNKNOWN_AGE`: stale)."""
        reading = self._readings.get(name)
        return None if reading is None else self._age(reading.stamp)

    def fresh(self, max_age_s: float | None = None) -> dict[str, Mapping[str, Any]]:
        """The readings as a mapping for conditions, leaving out those older than ``max_age_s``."""
        return {name: r.fields for name, r in self._readings.items()
                if max_age_s is None or self._age(r.stamp) <= max_age_s}

    def ran(self, name: str) -> None:
        """Action ``name`` ran now; kept at once, since a cooldown must survive a crash."""
        stamp = self._runs[name] = self.stamp()
        if self.store is not None:
            try:
                self.store.save_run(name, stamp)
            except ApplianceError as exc:  # the cooldown still holds until a restart
                log.warning("run_not_kept", action=name, error=str(exc))

    def since_run(self, name: str) -> float | None:
        """Seconds since action ``name`` last ran (``None``: never).

        Across a reboot only the wall clock can tell; a wall clock now behind
        the run's time (set back, or a Pi without a real-time clock) counts as
        no time at all, so a cooldown holds rather than lapses.
        """
        stamp = self._runs.get(name)
        if stamp is None:
            return None
        age = self._age(stamp)
        return age if age != UNKNOWN_AGE else max(0.0, self.wall() - stamp.at)

    @property
    def changed(self) -> bool:
        """Whether anything changed since the last :meth:`flush`."""
        return bool(self._dirty)

    def flush(self) -> dict[str, Any]:
        """Save what changed; returns the whole state as published on ``<base>/world``."""
        if self._dirty and self.store is not None:
            self.store.save_world({name: (dict(self._readings[name].fields),
                                          self._readings[name].stamp) for name in self._dirty})
        self._dirty.clear()
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """``{name: {"fields": {...}, "at": unix time, "age_s": seconds or null if unknown}}``."""
        snapshot = {}
        for name, r in sorted(self._readings.items()):
            age = self._age(r.stamp)
            snapshot[name] = {"fields": dict(r.fields), "at": round(r.stamp.at, 3),
                              "age_s": round(age, 1) if age != UNKNOWN_AGE else None}
        return snapshot
