"""The thermal policy: temperature (and firmware throttling) to a level, with hysteresis."""

from __future__ import annotations

from appliance.config.schema import ThermalLevel


class ThermalPolicy:
    """Chooses the level for a temperature.

    Heating up, the level rises as soon as the temperature reaches its
    ``from_c``. Cooling down, it falls only once the temperature is
    ``hysteresis_c`` below the current level's ``from_c``. A firmware that
    reports throttling forces at least the level named ``critical`` (or the
    second highest).
    """

    def __init__(self, levels: tuple[ThermalLevel, ...], hysteresis_c: float) -> None:
        self.levels = levels
        self.hysteresis_c = hysteresis_c
        names = [lvl.name for lvl in levels]
        self.critical = names.index("critical") if "critical" in names else max(0, len(levels) - 2)

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
        if firmware_limiting:
            target = max(target, self.critical)
        return target
