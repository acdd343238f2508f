"""The configured GPIO devices, through gpiozero: inputs that report events, outputs.

The pin factory is gpiozero's choice (lgpio on a Pi 5) unless one is passed
in; tests pass gpiozero's ``MockFactory``. gpiozero runs input callbacks on its
own threads, so ``on_event`` must be thread-safe (``Inbox.reading`` is).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpiozero import (
    LED,
    Button,
    Buzzer,
    Device,
    DigitalInputDevice,
    GPIOZeroError,
    MotionSensor,
    OutputDevice,
)
from gpiozero.pins import Factory

from appliance.config.schema import GpioInput, GpioSettings
from appliance.errors import ApplianceError
from appliance.logs import get_logger

log = get_logger("gpio")

EventCallback = Callable[[str, dict[str, Any]], None]

_STATES = {"button": ("pressed", "released"), "motion": ("motion", "no_motion"),
           "digital": ("active", "inactive")}


class GpioUnavailable(ApplianceError):
    """No usable GPIO on this machine (or the pins are busy)."""


class GpioDevices:
    """The configured GPIO devices.

    ``on_event(name, event)`` receives ``{"state", "value"}`` for every input
    change; :meth:`show_level` drives the fan (with its own hysteresis) and the
    status LED; :meth:`show_state` the state LEDs; :meth:`alert` beeps the buzzer.
    """

    def __init__(self, settings: GpioSettings, on_event: EventCallback,
                 pin_factory: Factory | None = None) -> None:
        self.settings = settings
        self._devices: list[Device] = []
        try:
            self.inputs = {spec.name: self._input(spec, on_event, pin_factory)
                           for spec in settings.inputs}
            self.led = self._output(LED, settings.status_led, pin_factory)
            self.fan = self._output(OutputDevice, settings.fan, pin_factory)
            self.buzzer = self._output(Buzzer, settings.buzzer, pin_factory)
            self.state_leds = {name: self._output(LED, pin, pin_factory)
                               for name, pin in settings.state_leds.items()}
            self.outputs: dict[str, OutputDevice] = {}
            for spec in settings.outputs:
                device = OutputDevice(spec.pin, active_high=spec.active_high,
                                      initial_value=spec.initial, pin_factory=pin_factory)
                self._devices.append(device)
                self.outputs[spec.name] = device
        except GPIOZeroError as exc:
            self.close()
            raise GpioUnavailable(f"GPIO unavailable: {exc}") from exc

    def _input(self, spec: GpioInput, on_event: EventCallback,
               factory: Factory | None) -> Device:
        if spec.kind == "motion":
            device: Any = MotionSensor(spec.pin, pin_factory=factory)
        elif spec.kind == "button":
            device = Button(spec.pin, pull_up=spec.pull_up, pin_factory=factory)
        else:
            device = DigitalInputDevice(spec.pin, pull_up=spec.pull_up, pin_factory=factory)
        on, off = _STATES[spec.kind]
        device.when_activated = lambda: on_event(spec.name, {"state": on, "value": 1})
        device.when_deactivated = lambda: on_event(spec.name, {"state": off, "value": 0})
        self._devices.append(device)
        return device

    def _output(self, cls: type[Any], pin: str | int | None,
                factory: Factory | None) -> Any:
        if pin is None:
            return None
        device = cls(pin, pin_factory=factory)
        self._devices.append(device)
        return device

    @property
    def fan_on(self) -> bool | None:
        """Whether the fan runs (``None``: there is none)."""
        return None if self.fan is None else bool(self.fan.value)

    def show_level(self, index: int, celsius: float | None, sensor_lost: bool = False) -> None:
        """LED lit above the lowest level; fan on from ``fan_on_c``, off below ``fan_off_c``.

        While ``sensor_lost`` (the temperature is unknown because the sensor
        failed) the fan runs whatever ``celsius`` says. An unknown temperature
        on a machine without a thermal zone (``celsius`` None, not lost)
        leaves the fan as it is.
        """
        if self.led is not None:
            self.led.value = index > 0
        if self.fan is None:
            return
        if sensor_lost:
            self.fan.on()
        elif celsius is not None:
            if celsius >= self.settings.fan_on_c:
                self.fan.on()
            elif celsius < self.settings.fan_off_c:
                self.fan.off()

    def show_state(self, state: str, error: bool) -> None:
        """Light the LED of ``state`` (and the error LED while ``error``), the others off."""
        for name, led in self.state_leds.items():
            led.value = name == state or (name == "error" and error)

    def set_output(self, name: str, value: bool) -> None:
        """Drive the output called ``name`` (an action's ``gpio``) on or off."""
        self.outputs[name].value = value

    def alert(self) -> None:
        """Two short beeps."""
        if self.buzzer is not None:
            self.buzzer.beep(on_time=0.1, off_time=0.1, n=2)

    def close(self) -> None:
        """Release every pin."""
        for device in self._devices:
            device.close()
        self._devices.clear()
