"""What an answer costs: the seeds' "performance per dollar", as the cost of 1,000 answers.

Two parts, each shown only when it is configured (``power`` in the config):

* **Electricity**: the answer's measured energy (:class:`~appliance.protocol.answer.Energy`,
  from the power meter) in kWh times ``power.price_per_kwh``. An answer without
  a measurement (no meter) adds nothing to this part and is not counted in it.
* **The device**: ``power.device_cost`` spread evenly over
  ``power.device_life_years`` of seconds, times the answer's own duration
  (``completion.total_ms``). This is the share of the device's life that the
  answer used: what answers cost on a device kept busy, so it compares boards
  and models fairly whatever the traffic is today. An idle device costs the
  same per day, but that is a cost of owning it, not of answering; it is
  deliberately left out rather than divided over however few answers came.

Only answers that ran a generation count (a refusal or an action's phrase costs
nothing measurable). The figure is the mean over the last :data:`WINDOW`
answers, times 1,000: a running mean, so that one long answer does not swing it.

    >>> from appliance.config.schema import PowerSettings
    >>> meter = CostMeter(PowerSettings(price_per_kwh=0.36, device_cost=100.0,
    ...                                 device_life_years=5.0))
    >>> round(meter.energy_cost(36_000.0), 4)  # 36 kJ = 0.01 kWh at 0.36 a kWh
    0.0036
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from appliance.config.schema import PowerSettings
from appliance.protocol.answer import Answer

WINDOW = 100
"""Answers in the running mean."""
JOULES_PER_KWH = 3.6e6
SECONDS_PER_YEAR = 365.25 * 86400


@dataclass(frozen=True)
class Cost:
    """The cost of 1,000 answers as the recent ones ran (``None``: that part is not known)."""

    per_1000: float | None
    energy_per_1000: float | None
    device_per_1000: float | None
    answers: int
    currency: str

    def as_json(self) -> dict[str, Any]:
        """For the console's state."""
        return {"per_1000": _round(self.per_1000), "energy_per_1000": _round(self.energy_per_1000),
                "device_per_1000": _round(self.device_per_1000), "answers": self.answers,
                "currency": self.currency}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def priced(power: PowerSettings) -> bool:
    """Whether the config gives any price to count answers at."""
    return power.price_per_kwh is not None or power.device_cost is not None


class CostMeter:
    """The recent answers' costs; :meth:`observe` takes each answer."""

    def __init__(self, power: PowerSettings) -> None:
        self.power = power
        self._energy: deque[float] = deque(maxlen=WINDOW)
        self._device: deque[float] = deque(maxlen=WINDOW)
        self._counted = 0  # answers in the window, up to WINDOW

    def energy_cost(self, joules: float) -> float | None:
        """The electricity of ``joules`` (``None`` without ``price_per_kwh``)."""
        price = self.power.price_per_kwh
        return None if price is None else joules / JOULES_PER_KWH * price

    def device_cost(self, seconds: float) -> float | None:
        """The device's price over ``seconds`` of its life (``None`` without ``device_cost``)."""
        cost = self.power.device_cost
        if cost is None:
            return None
        return cost / (self.power.device_life_years * SECONDS_PER_YEAR) * seconds

    def observe(self, answer: Answer) -> None:
        """Count one answer, if a generation ran for it."""
        done = answer.completion
        if done is None:
            return
        self._counted = min(self._counted + 1, WINDOW)
        if answer.energy is not None and answer.energy.joules >= 0:
            energy = self.energy_cost(answer.energy.joules)
            if energy is not None:
                self._energy.append(energy)
        device = self.device_cost(max(done.total_ms, 0.0) / 1000)
        if device is not None:
            self._device.append(device)

    def cost(self) -> Cost:
        """The cost of 1,000 answers at the recent answers' mean."""
        energy = _per_1000(self._energy)
        device = _per_1000(self._device)
        parts = [part for part in (energy, device) if part is not None]
        return Cost(sum(parts) if parts else None, energy, device, self._counted,
                    self.power.currency)


def _per_1000(costs: deque[float]) -> float | None:
    return sum(costs) / len(costs) * 1000 if costs else None
