"""Linux powercap RAPL: the CPU's own energy counters (x86 only, absent on a Pi).

Each zone ``/sys/class/powercap/intel-rapl:N`` has ``energy_uj``, a cumulative
microjoule counter that wraps at ``max_energy_range_uj``; a delta is
``(e2 - e1) % (max + 1)``, right as long as the counter wraps at most once
between two reads (a package counter takes the better part of an hour to wrap at
100 W). AMD processors report through the same driver and names.

Zones used: the top-level ones (``intel-rapl:N``, not their ``intel-rapl:N:M``
parts, which the package already counts). If one is named ``psys`` (the whole
platform, on many laptops) it alone is used, since it includes the packages;
otherwise the packages are summed. RAPL covers the processor (and, with psys,
the platform), never the screen, disks or USB devices.

The counters are read on the event loop: a sysfs read takes microseconds, far
less than a thread hand-off would.

Since the Platypus fix (CVE-2020-8694, kernel 5.10 and stable backports)
``energy_uj`` is readable by root only, so a service running as its own user
reads it only after a udev rule or ``chmod`` grants it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from appliance.power.meter import MeterError

_TOP_ZONE = re.compile(r"intel-rapl:\d+")


def _read_counter(path: Path) -> int:
    """A non-negative integer from a sysfs file, or a :class:`MeterError` naming it."""
    try:
        raw = path.read_text().strip()
    except PermissionError:
        raise MeterError(f"{path}: not readable by this user (root only since "
                         f"kernel 5.10, CVE-2020-8694)") from None
    except OSError as exc:
        raise MeterError(f"{path}: cannot read: {exc.strerror}") from exc
    if not raw.isdigit():
        raise MeterError(f"{path}: not a counter: {raw[:40]!r}")
    return int(raw)


class RaplMeter:
    """Energy in joules counted by RAPL since the first read.

    ``sysfs`` is the root that holds ``class/powercap`` (``/sys``; tests give a
    directory they write the same files into).
    """

    name = "rapl"
    kind: Literal["watts", "joules"] = "joules"
    min_interval_s = 0.0

    def __init__(self, sysfs: Path = Path("/sys")) -> None:
        self.powercap = sysfs / "class" / "powercap"
        self._ranges: dict[Path, int] = {}  # zone's energy_uj -> its max_energy_range_uj
        self._last: dict[Path, int] = {}
        self._joules = 0.0

    def zones(self) -> list[Path]:
        """The ``energy_uj`` files this meter sums (see the module docstring)."""
        try:
            tops = sorted(p for p in self.powercap.iterdir() if _TOP_ZONE.fullmatch(p.name))
        except OSError:
            tops = []
        tops = [p for p in tops if (p / "energy_uj").exists()]
        psys = [p for p in tops if _zone_name(p) == "psys"]
        return [p / "energy_uj" for p in psys or tops]

    async def read(self) -> float:
        """Joules since the first read, summed over the zones, wrap-arounds undone."""
        if not self._ranges:
            counters = self.zones()
            if not counters:
                raise MeterError(f"{self.powercap}: no intel-rapl zone with energy_uj")
            self._ranges = {c: _read_counter(c.with_name("max_energy_range_uj"))
                            for c in counters}
        now = {counter: _read_counter(counter) for counter in self._ranges}
        for counter, value in now.items():
            if value > self._ranges[counter]:
                raise MeterError(f"{counter}: {value} is above max_energy_range_uj "
                                 f"{self._ranges[counter]}")
            if counter in self._last:
                delta = (value - self._last[counter]) % (self._ranges[counter] + 1)
                self._joules += delta / 1e6
        self._last = now
        return self._joules


def _zone_name(zone: Path) -> str:
    try:
        return (zone / "name").read_text().strip()
    except OSError:
        return ""
