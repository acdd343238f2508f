"""The thermal watchdog: reads the SoC temperature and moves the thermal level.

Every ``thermal.interval_s`` it reads ``thermal.zone_path`` (and, every
``vcgencmd_every_s``, the firmware's throttling report where ``vcgencmd``
exists), applies the :class:`~appliance.thermal.policy.ThermalPolicy`, and calls
``on_change`` when the level changes. A sensor that cannot be read is a
warning, not a crash: the last level holds for ``stale_after_s``, then at
least ``warm`` is assumed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from appliance.config.schema import ThermalLevel, ThermalSettings
from appliance.errors import ApplianceError
from appliance.logs import get_logger
from appliance.thermal.policy import ThermalPolicy
from appliance.thermal.vcgencmd import ThrottleFlags, read_throttled
from appliance.thermal.zone import SensorError, read_celsius

log = get_logger("thermal")


class ThermalWatchdog:
    """Tracks the thermal level.

    ``on_change(level)`` runs on every level change, ``on_reading()`` after
    every reading (for the fan, which has its own hysteresis).
    """

    def __init__(self, settings: ThermalSettings, on_change: Callable[[ThermalLevel], None],
                 clock: Callable[[], float] = time.monotonic,
                 on_reading: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.policy = ThermalPolicy(settings.levels, settings.hysteresis_c)
        self.on_change = on_change
        self.on_reading = on_reading
        self.clock = clock
        self.index = 0
        self.celsius: float | None = None
        self.firmware: ThrottleFlags | None = None
        self._last_reading = clock()
        self._sensor_failing = False
        self._vcgencmd_at = float("-inf")
        self._vcgencmd_failing = False

    @property
    def level(self) -> ThermalLevel:
        """The current level."""
        return self.settings.levels[self.index]

    def observe(self, firmware: ThrottleFlags | None = None) -> ThermalLevel:
        """Take one reading and update the level; returns it."""
        now = self.clock()
        if firmware is not None:
            self.firmware = firmware
        try:
            self.celsius = read_celsius(self.settings.zone_path)
            self._last_reading = now
            if self._sensor_failing:
                log.info("sensor_recovered", celsius=self.celsius)
            self._sensor_failing = False
        except SensorError as exc:
            if not self._sensor_failing:
                log.warning("sensor_unreadable", error=str(exc))
            self._sensor_failing = True
        limiting = self.firmware is not None and self.firmware.limiting_now
        if not self._sensor_failing:
            assert self.celsius is not None
            target = self.policy.next_index(self.index, self.celsius, limiting)
        elif now - self._last_reading >= self.settings.stale_after_s:
            target = max(self.index, min(1, len(self.settings.levels) - 1))  # assume warm
        else:
            target = self.index
        if target != self.index:
            before = self.level.name
            self.index = target
            log.warning("level_changed", level=self.level.name, was=before,
                        celsius=self.celsius, firmware_limiting=limiting)
            self.on_change(self.level)
        self.on_reading()
        return self.level

    async def _firmware(self) -> ThrottleFlags | None:
        now = self.clock()
        if now - self._vcgencmd_at < self.settings.vcgencmd_every_s:
            return None
        self._vcgencmd_at = now
        try:
            return await asyncio.to_thread(read_throttled, self.settings.vcgencmd)
        except ApplianceError as exc:
            if not self._vcgencmd_failing:
                log.warning("vcgencmd_failed", error=str(exc))
            self._vcgencmd_failing = True
            return None

    async def run(self) -> None:
        """Observe every ``interval_s``, forever."""
        while True:
            self.observe(await self._firmware())
            await asyncio.sleep(self.settings.interval_s)
