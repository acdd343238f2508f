"""Temperature: the thermal zone, the firmware's throttling report, the policy and watchdog."""

from appliance.thermal.policy import ThermalPolicy
from appliance.thermal.vcgencmd import ThrottleFlags, parse_get_throttled, read_throttled
from appliance.thermal.watchdog import ThermalWatchdog
from appliance.thermal.zone import SensorError, ZoneMissing, read_celsius

__all__ = ["SensorError", "ThermalPolicy", "ThermalWatchdog", "ThrottleFlags",
           "ZoneMissing", "parse_get_throttled", "read_celsius", "read_throttled"]
