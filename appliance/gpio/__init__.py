"""GPIO: buttons and sensors in, status LED, fan and buzzer out."""

from appliance.gpio.parts import GpioParts, GpioUnavailable

__all__ = ["GpioParts", "GpioUnavailable"]
