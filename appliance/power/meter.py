"""What every power meter offers the monitor, and the meter for "no meter"."""

from __future__ import annotations

from typing import Literal, Protocol

from appliance.errors import ApplianceError


class MeterError(ApplianceError):
    """A power meter cannot be read, or reads something that is not a measurement."""


class PowerMeter(Protocol):
    """One source of power readings.

    ``kind`` says what :meth:`read` returns: ``"watts"``, the power right now
    (the PMIC), or ``"joules"``, energy counted since the meter was opened, never
    decreasing (RAPL, with its wrap-around already undone). ``min_interval_s``
    is the shortest time the meter may be read again in; the monitor never
    samples faster, whatever ``power.interval_s`` says.
    """

    name: str
    kind: Literal["watts", "joules"]
    min_interval_s: float

    async def read(self) -> float:
        """One reading; raises :class:`MeterError` when the meter cannot give one."""
        ...


class NoMeter:
    """``power.meter: none``, or ``auto`` on a machine with no meter: nothing is measured.

    The monitor never reads it; :meth:`read` exists to fit the protocol.
    """

    name = "none"
    kind: Literal["watts", "joules"] = "watts"
    min_interval_s = 0.0

    async def read(self) -> float:
        """Always fails: there is nothing to read."""
        raise MeterError("power.meter: none: there is no power meter")
