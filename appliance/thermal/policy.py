"""The thermal policy: temperature (and firmware throttling) to a level, with hysteresis."""

from __future__ import annotations

from appliance.config.schema import ThermalLevel


class ThermalPolicy:
    """Chooses the level for a temperature.

    Heating up, the level rises as soon as the temperature reaches its
    ``from_c``. Cooling down, it falls only once the temperature is
    ``hysteresis_c`` below the current level's ``from_c``. A firmware that
    reports throttling forces at least the level named ``critical`` (or the
    second highest). A lost sensor, once its last reading is stale, forces at
    least the level named ``hot`` (or the one below critical, and never the
    lowest when there is another).
    """

    def __init__(self, levels: tuple[ThermalLevel, ...], hysteresis_c: float) -> None:
        self.levels = levels
        self.hysteresis_c = hysteresis_c
        names = [lvl.name for lvl in levels]
        self.critical = names.index("critical") if "critical" in names else max(0, len(levels) - 2)
        self.hot = (names.index("hot") if "hot" in names
                    else max(min(1, len(levels) - 1), self.critical - 1))

    def index_for(self, celsius: float) -> int:
        """The level a temperature reaches, ignoring hysteresis."""
        index = 0
        for i, level in enumerate(self.levels):
            if celsius >= level.from_c:
                index = i
        return index

    def next_index(self, current: int, celsius: float, firmware_limiting: bool = False) -> int:
        """The level after reading ``celsius`` while at level ``current``."""
        target = self.index_for(celsius)
        if target < current and celsius > self.levels[current].from_c - self.hysteresis_c:
            target = current
        return self._with_firmware(target, firmware_limiting)

    def unknown_index(self, current: int, stale: bool, firmware_limiting: bool = False) -> int:
        """The level while the sensor is lost: ``current`` holds, raised to hot once ``stale``.

        It never falls: without a reading there is no evidence of cooling.
        """
        target = max(current, self.hot) if stale else current
        return self._with_firmware(target, firmware_limiting)

    def no_zone_index(self, firmware_limiting: bool = False) -> int:
        """The level on a machine without a thermal zone: the lowest, unless the firmware limits."""
        return self._with_firmware(0, firmware_limiting)

    def _with_firmware(self, target: int, firmware_limiting: bool) -> int:
        return max(target, self.critical) if firmware_limiting else target
