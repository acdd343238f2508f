"""Choosing the power meter that ``power.meter`` names, or the one this machine has."""

from __future__ import annotations

import shutil
from pathlib import Path

from appliance.config.schema import PowerSettings
from appliance.logs import get_logger
from appliance.power.meter import MeterError, NoMeter, PowerMeter
from appliance.power.pmic import PmicMeter
from appliance.power.rapl import RaplMeter

log = get_logger("power")


async def open_meter(settings: PowerSettings, sysfs: Path = Path("/sys")) -> PowerMeter:
    """The meter for ``settings``; ``sysfs`` is where RAPL's ``class/powercap`` lives.

    A named meter is returned as it is, working or not (the monitor reports its
    failures). ``auto`` tries, in order: vcgencmd, if the command exists and one
    run gives parseable rails; RAPL, if a zone exists and reads; else no meter.
    A candidate that exists but fails is one warning line for the whole choice;
    a machine that simply has neither is not a warning.
    """
    if settings.meter == "vcgencmd":
        return PmicMeter(settings.vcgencmd)
    if settings.meter == "rapl":
        return RaplMeter(sysfs)
    if settings.meter == "none":
        return NoMeter()
    problems: list[str] = []
    candidates: list[PowerMeter] = []
    if shutil.which(settings.vcgencmd) is not None:
        candidates.append(PmicMeter(settings.vcgencmd))
    rapl = RaplMeter(sysfs)
    if rapl.zones():
        candidates.append(rapl)
    for meter in candidates:
        try:
            await meter.read()
        except MeterError as exc:
            problems.append(str(exc))
            continue
        if problems:
            log.info("power_meter_skipped", meter=meter.name, error="; ".join(problems))
        return meter
    if problems:
        log.warning("power_meter_unavailable", meter="auto", error="; ".join(problems))
    return NoMeter()
