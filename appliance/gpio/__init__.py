"""GPIO: buttons and sensors in, status LED, fan and buzzer out."""

from appliance.gpio.devices import GpioDevices, GpioUnavailable

__all__ = ["GpioDevices", "GpioUnavailable"]
