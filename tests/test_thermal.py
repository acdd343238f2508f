"""Thermal: policy with hysteresis, firmware report decoding, the watchdog on a real file.

The faults run the watchdog on a real zone file and drive a real GpioDevices fan
on gpiozero's MockFactory; time is an injected clock, and vcgencmd is a small
shell script in tmp_path (the only stand-in: a Pi's firmware tool cannot run here).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory
from structlog.testing import capture_logs

from appliance.config import parse_settings
from appliance.config.schema import DEFAULT_THERMAL_LEVELS, ThermalLevel, ThermalSettings
from appliance.doctor import check_temperature
from appliance.errors import ApplianceError
from appliance.gpio import GpioDevices
from appliance.thermal import (
    SensorError,
    ThermalPolicy,
    ThermalWatchdog,
    ThrottleFlags,
    ZoneMissing,
    parse_get_throttled,
    read_celsius,
    read_throttled,
)

NAMES = [level.name for level in DEFAULT_THERMAL_LEVELS]
HOT = NAMES.index("hot")
FAN_PIN, LED_PIN = 23, 22
GPIO_YAML = (f"gpio:\n  enabled: true\n  fan: {FAN_PIN}\n  status_led: {LED_PIN}\n"
             "  fan_on_c: 65\n  fan_off_c: 55\n")
SPELL_EVENTS = {"sensor_lost", "sensor_recovered", "vcgencmd_failed", "vcgencmd_recovered"}


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


def test_unknown_temperature_holds_then_forces_hot() -> None:
    policy = ThermalPolicy(DEFAULT_THERMAL_LEVELS, hysteresis_c=3.0)
    assert policy.unknown_index(0, stale=False) == 0
    assert NAMES[policy.unknown_index(0, stale=True)] == "hot"
    assert NAMES[policy.unknown_index(4, stale=True)] == "emergency"  # never falls unread
    assert NAMES[policy.unknown_index(0, stale=False, firmware_limiting=True)] == "critical"
    assert policy.no_zone_index() == 0


@pytest.mark.parametrize(("names", "hot"), [
    (("cool", "mild", "toasty", "critical", "melt"), 2),  # the one below critical
    (("low", "high"), 1),  # never the lowest when there is another
    (("only",), 0),
])
def test_renamed_levels_have_a_sensible_hot(names: tuple[str, ...], hot: int) -> None:
    levels = tuple(ThermalLevel(name, 10.0 * i) for i, name in enumerate(names))
    assert ThermalPolicy(levels, 3.0).hot == hot


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


def _fake_vcgencmd(tmp_path: Path) -> tuple[Path, Path]:
    """A script standing in for the Pi's firmware tool: it prints the file ``out``."""
    out = tmp_path / "out"
    fake = tmp_path / "vcgencmd"
    fake.write_text(f"#!/bin/sh\ncat '{out}'\n")
    fake.chmod(0o755)
    return fake, out


def test_vcgencmd_runs_the_command_on_path(tmp_path: Path) -> None:
    fake, out = _fake_vcgencmd(tmp_path)
    out.write_text("throttled=0x50005\n")
    assert read_throttled(str(fake)) == ThrottleFlags.decode(0x50005)
    assert read_throttled(str(tmp_path / "absent")) is None
    out.write_bytes(b"\xff\xfe throttled\n")  # not UTF-8: an error, not a crash
    with pytest.raises(ApplianceError, match="vcgencmd: unexpected output"):
        read_throttled(str(fake))


FAULTS: dict[str, Callable[[Path], None]] = {
    "removed": Path.unlink,
    "empty": lambda zone: zone.write_text(""),
    "garbage": lambda zone: zone.write_text("garbage\n"),
    "99999999": lambda zone: zone.write_text("99999999\n"),
}


@pytest.mark.parametrize(("fault", "message"), [
    ("removed", "no such file"), ("empty", "not a temperature: ''"),
    ("garbage", "not a temperature: 'garbage'"), ("99999999", "outside the plausible"),
])
def test_zone_faults_are_sensor_errors_naming_the_file(tmp_path: Path, fault: str,
                                                       message: str) -> None:
    zone = tmp_path / "temp"
    zone.write_text("48312\n")
    assert read_celsius(zone) == pytest.approx(48.312)
    FAULTS[fault](zone)
    with pytest.raises(SensorError, match=message) as caught:
        read_celsius(zone)
    assert str(caught.value).startswith(f"{zone}: ")
    assert isinstance(caught.value, ZoneMissing) is (fault == "removed")


def test_zone_read_is_bounded_and_never_blocks(tmp_path: Path) -> None:
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SensorError, match="not a temperature"):
        read_celsius(binary)
    with pytest.raises(SensorError, match="not a temperature"):
        read_celsius(Path("/dev/zero"))  # endless: one bounded read
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: a blocking open would hang the watchdog's loop
    with pytest.raises(SensorError, match="not a temperature: ''"):
        read_celsius(fifo)
    with pytest.raises(SensorError, match="cannot read the temperature"):
        read_celsius(tmp_path)


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
    assert dog.observe().name == "hot"  # then at least hot is assumed (was warm: issue 16)
    zone.write_text("150001")
    now[0] = 46.0
    assert dog.observe().name == "hot"  # an implausible value is not believed
    zone.write_text("50000")
    assert dog.observe().name == "normal"
    assert [c.name for c in changes] == ["warm", "normal", "hot", "normal"]


class Rig:
    """A watchdog on a real zone file, driving a real fan on gpiozero's MockFactory."""

    def __init__(self, tmp_path: Path, factory: MockFactory, zone_text: str | None = "50000\n",
                 vcgencmd: str = "/nonexistent/vcgencmd") -> None:
        self.zone = tmp_path / "temp"
        if zone_text is not None:
            self.zone.write_text(zone_text)
        self.now = 0.0
        self.changes: list[str] = []
        self.factory = factory
        self.parts = GpioDevices(parse_settings(GPIO_YAML).gpio, lambda *_: None, factory)
        settings = ThermalSettings(zone_path=self.zone, stale_after_s=30, vcgencmd=vcgencmd,
                                   vcgencmd_every_s=10)
        self.dog = ThermalWatchdog(settings, lambda level: self.changes.append(level.name),
                                   clock=lambda: self.now, on_reading=self.show)

    def show(self) -> None:
        """What the supervisor wires to ``on_reading``."""
        self.parts.show_level(self.dog.index, self.dog.celsius,
                              sensor_lost=self.dog.sensor_error is not None)

    def observe(self, at: float) -> str:
        self.now = at
        return self.dog.observe().name

    @property
    def fan_on(self) -> bool:
        return bool(self.factory.pin(FAN_PIN).state)


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


def _spells(logs: list[dict[str, Any]]) -> list[str]:
    return [entry["event"] for entry in logs if entry["event"] in SPELL_EVENTS]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_lost_sensor_fails_closed(tmp_path: Path, factory: MockFactory, fault: str) -> None:
    rig = Rig(tmp_path, factory)
    try:
        with capture_logs() as logs:
            assert rig.observe(0.0) == "normal" and rig.dog.celsius == 50.0
            assert not rig.fan_on and rig.dog.sensor_error is None
            FAULTS[fault](rig.zone)
            assert rig.observe(5.0) == "normal"  # the level holds while the reading is fresh
            assert rig.dog.celsius is None and rig.fan_on  # ... but unknown at once
            assert rig.dog.sensor_error is not None and str(rig.zone) in rig.dog.sensor_error
            rig.observe(29.0)
            assert rig.dog.index < HOT
            for at in (30.0, 31.0, 300.0):  # stale: at least hot, for as long as it lasts
                rig.observe(at)
                assert rig.dog.index >= HOT and rig.dog.celsius is None and rig.fan_on
            assert _spells(logs) == ["sensor_lost"]  # once, however long
            rig.zone.write_text("50000\n")
            assert rig.observe(301.0) == "normal" and rig.dog.celsius == 50.0
            assert rig.dog.sensor_error is None and not rig.fan_on  # 50 < fan_off_c
            rig.observe(302.0)
        assert _spells(logs) == ["sensor_lost", "sensor_recovered"]
        lost, recovered = (e for e in logs if e["event"] in SPELL_EVENTS)
        assert lost["log_level"] == "warning" and str(rig.zone) in lost["error"]
        assert recovered["celsius"] == 50.0 and recovered["after_s"] == 296.0
        assert rig.changes == ["hot", "normal"]
    finally:
        rig.parts.close()


def test_every_spell_is_logged_again(tmp_path: Path, factory: MockFactory) -> None:
    rig = Rig(tmp_path, factory)
    try:
        with capture_logs() as logs:
            at = 0.0
            for fault in ("removed", "garbage"):
                rig.observe(at)
                FAULTS[fault](rig.zone)
                for _ in range(3):
                    at += 1.0
                    rig.observe(at)
                rig.zone.write_text("50000\n")
                at += 1.0
                rig.observe(at)
        assert _spells(logs) == ["sensor_lost", "sensor_recovered"] * 2
    finally:
        rig.parts.close()


def test_nonsense_from_startup_is_a_lost_sensor(tmp_path: Path, factory: MockFactory) -> None:
    rig = Rig(tmp_path, factory, zone_text="garbage\n")
    try:
        assert rig.observe(0.0) == "normal" and rig.fan_on and rig.dog.sensor_error
        rig.observe(30.0)
        assert rig.dog.index >= HOT
    finally:
        rig.parts.close()


def test_no_thermal_zone_is_not_a_lost_sensor(tmp_path: Path, factory: MockFactory) -> None:
    rig = Rig(tmp_path, factory, zone_text=None)
    try:
        with capture_logs() as logs:
            for at in (0.0, 31.0, 3600.0):
                assert rig.observe(at) == "normal"
                assert rig.dog.celsius is None and rig.dog.sensor_error is None
                assert not rig.fan_on and not rig.dog.has_zone
        assert rig.changes == []
        assert [e["event"] for e in logs] == ["no_thermal_zone"]
        settings = parse_settings(f"thermal:\n  zone_path: {rig.zone}\n")
        check = check_temperature(settings)
        assert (check.status, check.detail) == ("warn",
                                                f"no thermal zone at {rig.zone}: not throttled")
        rig.zone.write_text("50000\n")  # a zone that turns up later, and then goes, is lost
        rig.observe(3601.0)
        assert rig.dog.has_zone and rig.dog.celsius == 50.0
        rig.zone.unlink()
        rig.observe(3602.0)
        assert rig.fan_on and rig.dog.sensor_error is not None
    finally:
        rig.parts.close()


def test_doctor_fails_a_lost_sensor_and_reads_a_good_one(tmp_path: Path) -> None:
    zone = tmp_path / "temp"
    settings = parse_settings(f"thermal:\n  zone_path: {zone}\n")
    zone.write_text("99999999\n")
    check = check_temperature(settings)
    assert check.status == "fail" and f"{zone}: 100000.0 °C is outside" in check.detail
    zone.write_text("48312\n")
    assert (check_temperature(settings).status, check_temperature(settings).detail) == (
        "ok", "48.3 °C")


def test_firmware_flags_expire(tmp_path: Path, factory: MockFactory) -> None:
    rig = Rig(tmp_path, factory, zone_text="40000\n")
    try:
        rig.now = 0.0
        assert rig.dog.observe(ThrottleFlags.decode(0x4)).name == "critical"
        assert rig.observe(29.0) == "critical"  # within 3 x vcgencmd_every_s
        assert rig.observe(30.0) == "normal"  # no fresh report: the flag no longer counts
        assert rig.dog.firmware is None and rig.changes == ["critical", "normal"]
    finally:
        rig.parts.close()


def test_vcgencmd_garbage_after_throttled_expires_and_spells_are_logged(
        tmp_path: Path, factory: MockFactory) -> None:
    fake, out = _fake_vcgencmd(tmp_path)
    rig = Rig(tmp_path, factory, zone_text="40000\n", vcgencmd=str(fake))

    async def step(at: float, output: str) -> tuple[str, bool]:
        out.write_text(output)
        rig.now = at
        level = await rig.dog.tick()
        return level.name, rig.dog.vcgencmd_error is not None

    async def scenario() -> list[tuple[str, bool]]:
        return [await step(0.0, "throttled=0x4\n"),
                await step(10.0, "garbage\n"),
                await step(20.0, "garbage\n"),
                await step(30.0, "garbage\n"),  # 3 intervals without a good report
                await step(40.0, "throttled=0x0\n"),
                await step(50.0, "error=1 error_msg=\"Command not registered\"\n"),
                await step(60.0, "throttled=0x0\n")]

    try:
        with capture_logs() as logs:
            steps = asyncio.run(scenario())
        assert steps == [("critical", False), ("critical", True), ("critical", True),
                         ("normal", True), ("normal", False), ("normal", True),
                         ("normal", False)]
        assert _spells(logs) == ["vcgencmd_failed", "vcgencmd_recovered"] * 2
        failed = next(e for e in logs if e["event"] == "vcgencmd_failed")
        assert "unexpected output 'garbage'" in failed["error"]
        assert rig.changes == ["critical", "normal"]
    finally:
        rig.parts.close()
