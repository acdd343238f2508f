"""The thermal watchdog: reads the SoC temperature and moves the thermal level.

Every ``thermal.interval_s`` it reads ``thermal.zone_path`` (and, every
``vcgencmd_every_s``, the firmware's throttling report where ``vcgencmd``
exists), applies the :class:`~appliance.thermal.policy.ThermalPolicy`, and calls
``on_change`` when the level changes. The sensor is in one of three conditions:

* **read**: ``celsius`` is the temperature and the policy decides the level.
* **lost**: the zone was read before, or its file exists, but now it cannot be
  read, is empty, holds garbage or an implausible value. ``celsius`` is ``None``
  and ``sensor_error`` says why from the first failed read, so the state shows
  ``temp_c: null`` and the fan runs at once. The level holds (it never falls
  without a reading) until the last good reading is ``stale_after_s`` old, then
  it is at least ``hot`` until a reading returns. The level is not forced at
  once because one failed read is common and harmless (a driver rebinding, a
  non-atomic write to a test or bench fixture, one EIO from a sensor bus), and
  cutting every answer for a blip helps nothing: meanwhile the last reading is
  at most ``stale_after_s`` old, the fan is already on, a firmware report of
  throttling still forces ``critical``, and the firmware protects the silicon
  itself at 80-85 °C whatever we do.
* **absent**: there has been no file at the zone path since startup (a dev box,
  a VM, a container). That is not a fault: ``celsius`` is ``None``,
  ``sensor_error`` stays ``None``, nothing is throttled, and it is logged once.

A firmware report holds for :data:`FIRMWARE_TTL_INTERVALS` vcgencmd intervals;
without a fresh good report it then stops counting, so an old ``throttled=0x4``
followed by failing vcgencmd calls does not hold ``critical`` for good. Each
failure spell (of the zone and of vcgencmd, separately) is logged once when it
starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from appliance.config.schema import ThermalLevel, ThermalSettings
from appliance.errors import ApplianceError
from appliance.logs import get_logger
from appliance.thermal.policy import ThermalPolicy
from appliance.thermal.spell import FailureSpell
from appliance.thermal.vcgencmd import ThrottleFlags, read_throttled
from appliance.thermal.zone import SensorError, ZoneMissing, read_celsius

log = get_logger("thermal")

FIRMWARE_TTL_INTERVALS = 3
"""How many ``vcgencmd_every_s`` a firmware report counts for without a fresh one."""


class ThermalWatchdog:
    """Tracks the thermal level.

    ``on_change(level)`` runs on every level change, ``on_reading()`` after
    every attempt to read (for the fan, which has its own hysteresis, and for
    the state, which shows ``celsius`` and ``sensor_error``).
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
        self.has_zone = False
        self._firmware_at = float("-inf")
        self._last_reading = clock()
        self._no_zone_logged = False
        self._sensor = FailureSpell(log, "sensor_lost", "sensor_recovered")
        self._vcgencmd = FailureSpell(log, "vcgencmd_failed", "vcgencmd_recovered")
        self._vcgencmd_at = float("-inf")

    @property
    def level(self) -> ThermalLevel:
        """The current level."""
        return self.settings.levels[self.index]

    @property
    def sensor_error(self) -> str | None:
        """Why the temperature is unknown while the sensor is lost; ``None`` otherwise."""
        return self._sensor.error

    @property
    def vcgencmd_error(self) -> str | None:
        """Why the last ``vcgencmd get_throttled`` failed, during a failure spell."""
        return self._vcgencmd.error

    def observe(self, firmware: ThrottleFlags | None = None) -> ThermalLevel:
        """Take one reading (and a fresh firmware report, if any); returns the level."""
        now = self.clock()
        self._take_firmware(firmware, now)
        self._read(now)
        limiting = self.firmware is not None and self.firmware.limiting_now
        if self.celsius is not None:
            target = self.policy.next_index(self.index, self.celsius, limiting)
        elif self.sensor_error is not None:
            stale = now - self._last_reading >= self.settings.stale_after_s
            target = self.policy.unknown_index(self.index, stale, limiting)
        else:
            target = self.policy.no_zone_index(limiting)
        if target != self.index:
            before = self.level.name
            self.index = target
            log.warning("level_changed", level=self.level.name, was=before,
                        celsius=self.celsius, firmware_limiting=limiting,
                        sensor_error=self.sensor_error)
            self.on_change(self.level)
        self.on_reading()
        return self.level

    def _take_firmware(self, firmware: ThrottleFlags | None, now: float) -> None:
        if firmware is not None:
            self.firmware, self._firmware_at = firmware, now
        elif now - self._firmware_at >= FIRMWARE_TTL_INTERVALS * self.settings.vcgencmd_every_s:
            self.firmware = None

    def _read(self, now: float) -> None:
        path = self.settings.zone_path
        try:
            self.celsius = read_celsius(path)
        except ZoneMissing as exc:
            self.celsius = None
            if self.has_zone:
                self._sensor.failed(str(exc), now, level=self.level.name)
            elif not self._no_zone_logged:
                self._no_zone_logged = True
                log.warning("no_thermal_zone", path=str(path), detail="not throttled")
        except SensorError as exc:
            self.celsius = None
            self.has_zone = True
            self._sensor.failed(str(exc), now, level=self.level.name)
        else:
            self.has_zone = True
            self._last_reading = now
            self._sensor.succeeded(now, celsius=self.celsius)

    async def _firmware(self) -> ThrottleFlags | None:
        """A fresh ``get_throttled`` report when one is due and vcgencmd answers sensibly."""
        now = self.clock()
        if now - self._vcgencmd_at < self.settings.vcgencmd_every_s:
            return None
        self._vcgencmd_at = now
        try:
            flags = await asyncio.to_thread(read_throttled, self.settings.vcgencmd)
        except ApplianceError as exc:
            self._vcgencmd.failed(str(exc), now)
            return None
        if flags is not None:
            self._vcgencmd.succeeded(now, throttled=hex(flags.raw))
        return flags

    async def tick(self) -> ThermalLevel:
        """One round: the firmware's report when it is due, then a reading."""
        return self.observe(await self._firmware())

    async def run(self) -> None:
        """Tick every ``interval_s``, forever."""
        while True:
            await self.tick()
            await asyncio.sleep(self.settings.interval_s)
