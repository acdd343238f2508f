"""Temperature: reading the SoC's thermal zone."""

from appliance.thermal.zone import SensorError, read_celsius

__all__ = ["SensorError", "read_celsius"]
