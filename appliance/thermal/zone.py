"""Read a Linux thermal zone (``/sys/class/thermal/thermal_zone*/temp``)."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.errors import ApplianceError

# A sysfs temperature is a handful of digits; more than this is not a thermal zone.
_MAX_BYTES = 64


class SensorError(ApplianceError):
    """The temperature sensor cannot be read or reads nonsense."""


class ZoneMissing(SensorError):
    """There is no file at the zone path (a machine without a thermal zone, or a lost one)."""


def read_celsius(path: Path) -> float:
    """The temperature in °C from a sysfs-style file holding millidegrees (``48312``).

    Plain degrees (``48.3``) are accepted too, since some sensors and test
    fixtures write them. Values outside -40..150 °C are rejected as nonsense.
    Raises :class:`ZoneMissing` when there is no such file, :class:`SensorError`
    for anything else. One bounded, non-blocking read: a misconfigured path
    (``/dev/zero``, a FIFO) cannot hang or flood the watchdog.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            data = os.read(fd, _MAX_BYTES + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise ZoneMissing(f"{path}: cannot read the temperature: no such file") from None
    except OSError as exc:
        raise SensorError(
            f"{path}: cannot read the temperature: {exc.strerror or exc}") from exc
    raw = data.decode("utf-8", errors="replace").strip()
    try:
        if len(data) > _MAX_BYTES:
            raise ValueError(raw)
        value = float(raw)
    except ValueError:
        raise SensorError(f"{path}: not a temperature: {raw[:40]!r}") from None
    celsius = value / 1000 if abs(value) > 200 else value
    if not -40.0 <= celsius <= 150.0:
        raise SensorError(f"{path}: {celsius:.1f} °C is outside the plausible -40..150 °C")
    return celsius
