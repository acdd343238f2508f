"""Thermal: policy with hysteresis, firmware report decoding, the watchdog on a real file."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config.schema import DEFAULT_THERMAL_LEVELS, ThermalLevel, ThermalSettings
from appliance.errors import ApplianceError
from appliance.thermal import (
    ThermalPolicy,
    ThermalWatchdog,
    ThrottleFlags,
    parse_get_throttled,
    read_throttled,
)

NAMES = [level.name for level in DEFAULT_THERMAL_LEVELS]


def test_ramp_with_hysteresis() -> None:
    policy = ThermalPolicy(DEFAULT_THERMAL_LEVELS, hysteresis_c=3.0)
    index, seen = 0, []
    for celsius in (60, 72, 77, 73, 82, 86, 83, 78, 74, 71, 65):
        index = policy.next_index(index, celsius)
        seen.append(NAMES[index])
    assert seen == ["normal", "warm", "hot", "hot", "critical", "emergency", "emergency",
                    "hot", "hot", "warm", "normal"]


def test_firmware_throttling_forces_critical() -> None:
    policy = ThermalPolicy(DEFAULT_THERMAL_LEVELS, hysteresis_c=3.0)
    assert NAMES[policy.next_index(0, 55, firmware_limiting=True)] == "critical"
    assert NAMES[policy.next_index(4, 90, firmware_limiting=True)] == "emergency"


@pytest.mark.parametrize(("output", "now", "occurred", "limiting"), [
    ("throttled=0x0", set(), set(), False),
    ("throttled=0x50000\n", set(), {"under_voltage", "throttled"}, False),
    ("throttled=0x50005", {"under_voltage", "throttled"}, {"under_voltage", "throttled"}, True),
    ("throttled=0x80008", {"soft_temp_limit"}, {"soft_temp_limit"}, True),
])
def test_vcgencmd_decoding(output: str, now: set[str], occurred: set[str],
                           limiting: bool) -> None:
    flags = parse_get_throttled(output)
    names = ("under_voltage", "arm_capped", "throttled", "soft_temp_limit")
    assert {n for n in names if getattr(flags, n)} == now
    assert {n for n in names if getattr(flags, f"{n}_occurred")} == occurred
    assert flags.limiting_now is limiting


def test_vcgencmd_garbage_is_an_error() -> None:
    with pytest.raises(ApplianceError, match="unexpected output"):
        parse_get_throttled("error=1 error_msg=\"Command not registered\"")


def test_vcgencmd_runs_the_command_on_path(tmp_path: Path) -> None:
    fake = tmp_path / "vcgencmd"  # stands in for the Pi's firmware tool, same interface
    fake.write_text("#!/bin/sh\necho throttled=0x50005\n")
    fake.chmod(0o755)
    flags = read_throttled(str(fake))
    assert flags == ThrottleFlags.decode(0x50005)
    assert read_throttled(str(tmp_path / "absent")) is None


def test_watchdog_survives_a_bad_sensor(tmp_path: Path) -> None:
    zone = tmp_path / "temp"
    zone.write_text("72000\n")
    now = [0.0]
    changes: list[ThermalLevel] = []
    dog = ThermalWatchdog(ThermalSettings(zone_path=zone, stale_after_s=30), changes.append,
                          clock=lambda: now[0])
    assert dog.observe().name == "warm" and dog.celsius == 72.0
    zone.write_text("65000\n")
    assert dog.observe().name == "normal"
    zone.write_text("not a number")
    now[0] = 10.0
    assert dog.observe().name == "normal"  # the last level holds for a while
    zone.unlink()
    now[0] = 45.0
    assert dog.observe().name == "warm"  # then warm is assumed
    zone.write_text("150001")
    now[0] = 46.0
    assert dog.observe().name == "warm"  # an implausible value is not believed
    zone.write_text("50000")
    assert dog.observe().name == "normal"
    assert [c.name for c in changes] == ["warm", "normal", "warm", "normal"]
