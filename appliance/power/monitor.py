"""The power monitor: samples a meter on its own schedule and integrates energy.

:meth:`PowerMonitor.run` is an asyncio task of its own; the generation never
waits for a reading. Each sample becomes a point ``(time, cumulative joules,
watts)``: a power meter's joules grow by the trapezoid between its last two
readings, a counter's joules are the counter itself and its watts the rate over
the last interval. Between two points the cumulative energy is interpolated
linearly; after the newest point it is extrapolated with the newest power.

A generation is measured between two instants::

    mark = monitor.mark()            # the generation starts
    ...
    energy = monitor.since(mark)     # it ends: Energy(joules, avg_w, seconds, samples) or None

``since`` evaluates the cumulative energy at both instants. A generation that
falls between two samples (``samples == 0``) gets the newest power times its
duration, so even a one-token answer has an estimate. Each end is uncertain by
at most one interval times the power change across it.

``since`` gives ``None`` when there is no meter, when there was no reading yet
at the mark (or a counter has only one), when the meter failed at any time
between the mark and now (a failure drops the points: the series is broken), or
when the mark is older than the points kept (an hour's worth).
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.config.schema import PowerSettings
from appliance.logs import get_logger
from appliance.power.auto import open_meter
from appliance.power.meter import MeterError, NoMeter, PowerMeter

log = get_logger("power")

RETAIN_S = 3600.0
"""How far back the points reach: the longest generation that can be measured."""


@dataclass(frozen=True)
class Mark:
    """An instant on the monitor's clock, from :meth:`PowerMonitor.mark`."""

    at: float


@dataclass(frozen=True)
class Energy:
    """What one generation cost: ``samples`` is how many readings fell inside it."""

    joules: float
    avg_w: float
    seconds: float
    samples: int


@dataclass(frozen=True)
class _Point:
    at: float
    joules: float
    watts: float | None  # None only for a counter's first reading


class PowerMonitor:
    """Samples ``meter`` every ``interval_s`` (never faster than the meter allows).

    ``clock`` is the monitor's time source, injectable for tests; marks and
    samples share it.
    """

    def __init__(self, meter: PowerMeter, interval_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.meter = meter
        self.interval_s = max(interval_s, meter.min_interval_s)
        self.clock = clock
        self._points: deque[_Point] = deque(maxlen=math.ceil(RETAIN_S / self.interval_s) + 1)
        self._failing = False

    @classmethod
    async def open(cls, settings: PowerSettings, sysfs: Path = Path("/sys"),
                   clock: Callable[[], float] = time.monotonic) -> PowerMonitor:
        """A monitor for ``settings.power`` (``auto`` probes the machine once, here)."""
        monitor = cls(await open_meter(settings, sysfs), settings.interval_s, clock)
        log.info("power_meter", meter=monitor.meter.name, interval_s=monitor.interval_s)
        return monitor

    @property
    def metered(self) -> bool:
        """There is a meter at all (``power_w`` may still be ``None`` while it fails)."""
        return not isinstance(self.meter, NoMeter)

    @property
    def power_w(self) -> float | None:
        """The newest power in watts; ``None`` without a meter, a reading, or while failing."""
        return self._points[-1].watts if self._points else None

    async def run(self) -> None:
        """Sample forever (returns at once when there is no meter)."""
        if not self.metered:
            return
        while True:
            await self.sample()
            await asyncio.sleep(self.interval_s)

    async def sample(self) -> None:
        """Take one reading. A failure is one warning until the meter reads again."""
        if not self.metered:
            return
        started = self.clock()
        try:
            value = await self.meter.read()
        except MeterError as exc:
            if not self._failing:
                log.warning("power_meter_unreadable", meter=self.meter.name, error=str(exc))
            self._failing = True
            self._points.clear()
            return
        point = self._point((started + self.clock()) / 2, value)
        if self._failing:
            log.info("power_meter_recovered", meter=self.meter.name, power_w=point.watts)
        self._failing = False
        self._points.append(point)

    def mark(self) -> Mark:
        """Now, to hand to :meth:`since` later."""
        return Mark(self.clock())

    def since(self, mark: Mark) -> Energy | None:
        """The energy from ``mark`` to now, or ``None`` (see the module docstring)."""
        end = self.clock()
        start_j, end_j = self._joules_at(mark.at), self._joules_at(end)
        if start_j is None or end_j is None or end <= mark.at:
            return None
        seconds, joules = end - mark.at, end_j - start_j
        samples = sum(1 for point in self._points if mark.at <= point.at <= end)
        return Energy(joules, joules / seconds, seconds, samples)

    def _point(self, at: float, value: float) -> _Point:
        last = self._points[-1] if self._points else None
        if self.meter.kind == "joules":
            if last is None:
                return _Point(at, value, None)
            span = at - last.at
            return _Point(at, value, (value - last.joules) / span if span > 0 else last.watts)
        if last is None or last.watts is None:
            return _Point(at, 0.0, value)
        return _Point(at, last.joules + (last.watts + value) / 2 * (at - last.at), value)

    def _joules_at(self, t: float) -> float | None:
        """The cumulative energy at ``t``, from the points; ``None`` where they do not reach."""
        points = self._points
        if not points or t < points[0].at:
            return None
        last = points[-1]
        if t >= last.at:
            return None if last.watts is None else last.joules + last.watts * (t - last.at)
        after = bisect.bisect_right(points, t, key=lambda point: point.at)
        a, b = points[after - 1], points[after]
        return a.joules + (b.joules - a.joules) * (t - a.at) / (b.at - a.at)
