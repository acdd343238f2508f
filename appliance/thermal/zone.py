"""Read a Linux thermal zone (``/sys/class/thermal/thermal_zone*/temp``)."""

from __future__ import annotations

from pathlib import Path

from appliance.errors import ApplianceError


class SensorError(ApplianceError):
    """The temperature sensor cannot be read or reads nonsense."""


def read_celsius(path: Path) -> float:
    """The temperature in °C from a sysfs-style file holding millidegrees (``48312``).

    Plain degrees (``48.3``) are accepted too, since some sensors and test
    fixtures write them. Values outside -40..150 °C are rejected as nonsense.
    """
    try:
        raw = path.read_text().strip()
        value = float(raw)
    except OSError as exc:
        raise SensorError(f"{path}: cannot read the temperature: {exc.strerror}") from exc
    except ValueError:
        raise SensorError(f"{path}: not a temperature: {raw[:40]!r}") from None
    celsius = value / 1000 if abs(value) > 200 else value
    if not -40.0 <= celsius <= 150.0:
        raise SensorError(f"{path}: {celsius:.1f} °C is outside the plausible -40..150 °C")
    return celsius
