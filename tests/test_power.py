"""Power: the PMIC through a stand-in vcgencmd, RAPL on real files, the monitor's energy."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance import logs
from appliance.config.schema import PowerSettings
from appliance.power import (
    MeterError,
    PmicMeter,
    PowerMonitor,
    RaplMeter,
    board_watts,
    open_meter,
    parse_pmic_read_adc,
)
from tests.helpers import eventually_async

RECORDED = Path(__file__).parent / "data" / "pmic_read_adc.txt"
RAPL_MAX_UJ = 262143328850  # max_energy_range_uj of a real package zone


def expected_watts(text: str) -> float:
    """The board estimate, worked out here from the text on its own terms."""
    amps, volts = {}, {}
    for line in text.splitlines():
        label, reading = line.split()
        value = float(reading.split("=")[1][:-1])
        (amps if label.endswith("_A") else volts)[label[:-2]] = value
    return sum(volts[name] * amps[name] for name in amps if name in volts) * 1.1451 + 0.5879


def vcgencmd(tmp_path: Path, body: str, name: str = "vcgencmd") -> Path:
    """A script standing in for the Pi's firmware tool: same command line, same output."""
    script = tmp_path / name
    script.write_text("#!/bin/sh\n"
                      '[ "$1" = pmic_read_adc ] || { echo "unexpected: $*" >&2; exit 2; }\n'
                      + body)
    script.chmod(0o755)
    return script


def writes_pid(pid_file: Path) -> str:
    """Shell lines that publish the script's pid atomically (a reader never sees it empty)."""
    return f'echo $$ > "{pid_file}.new" && mv "{pid_file}.new" "{pid_file}"\n'


def replaying(tmp_path: Path, text: str) -> tuple[Path, Path]:
    """A vcgencmd that prints whatever ``output`` holds when it runs; returns both."""
    output = tmp_path / "output.txt"
    output.write_text(text)
    return vcgencmd(tmp_path, f'cat "{output}"\n'), output


class Clock:
    """The monitor's time, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def events() -> Callable[[], list[dict[str, object]]]:
    """The power component's log events so far, as JSON objects."""
    out = io.StringIO()
    logs.configure("debug", "json", stream=out)
    return lambda: [e for e in map(json.loads, out.getvalue().splitlines())
                    if e.get("component") == "power"]


def rapl_zone(root: Path, zone: str, name: str, energy_uj: int) -> Path:
    directory = root / "class" / "powercap" / zone
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "name").write_text(f"{name}\n")
    (directory / "max_energy_range_uj").write_text(f"{RAPL_MAX_UJ}\n")
    (directory / "energy_uj").write_text(f"{energy_uj}\n")
    return directory / "energy_uj"


# --- the PMIC ---------------------------------------------------------------------------

def test_recorded_output_gives_a_plausible_board_estimate() -> None:
    text = RECORDED.read_text()
    rails = parse_pmic_read_adc(text)
    assert len(rails) == 12 and "EXT5V" not in rails and "BATT" not in rails
    assert rails["VDD_CORE"] == (0.883143, 2.854)
    watts = board_watts(rails)
    assert watts == pytest.approx(expected_watts(text), rel=1e-12)
    assert 2.5 < watts < 12.0  # a Pi 5 under load, by the PMIC's account


@pytest.mark.parametrize("output", [
    'error=2 error_msg="Invalid arguments"\n',  # a firmware without pmic_read_adc
    "      VDD_CORE_A current(7)=2.85",  # cut off mid-line
    "         EXT5V_V volt(24)=5.14689800V\n",  # voltages only: nothing to multiply
    "      VDD_CORE_A current(7)=nanA\n      VDD_CORE_V volt(19)=0.88314300V\n",
    "      VDD_CORE_A volt(7)=2.85400000V\n",  # a current's name with a voltage
    "",
])
def test_garbled_output_is_a_meter_error(output: str) -> None:
    with pytest.raises(MeterError, match=r"^vcgencmd pmic_read_adc: "):
        parse_pmic_read_adc(output)


def test_vcgencmd_runs_as_a_child_process(tmp_path: Path) -> None:
    script, _ = replaying(tmp_path, RECORDED.read_text())
    watts = asyncio.run(PmicMeter(str(script)).read())
    assert watts == pytest.approx(expected_watts(RECORDED.read_text()))


def test_vcgencmd_failures_say_what_went_wrong(tmp_path: Path) -> None:
    denied = vcgencmd(tmp_path, 'echo "VCHI initialization failed" >&2\nexit 255\n')
    with pytest.raises(MeterError, match=r"exit status 255: VCHI initialization failed.*video"):
        asyncio.run(PmicMeter(str(denied)).read())
    with pytest.raises(MeterError, match="not an executable on PATH"):
        asyncio.run(PmicMeter(str(tmp_path / "absent")).read())


def test_a_hung_vcgencmd_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    hung = vcgencmd(tmp_path, writes_pid(pid_file) + "exec sleep 600\n")
    with pytest.raises(MeterError, match=r"no answer in 0\.3 s"):
        # the outer limit only keeps a meter that waits for its child from hanging the test
        asyncio.run(asyncio.wait_for(PmicMeter(str(hung), timeout_s=0.3).read(), 20))
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


# --- the monitor on the PMIC ------------------------------------------------------------

def test_energy_is_power_times_time(tmp_path: Path) -> None:
    script, _ = replaying(tmp_path, RECORDED.read_text())
    watts = expected_watts(RECORDED.read_text())
    clock = Clock()
    monitor = PowerMonitor(PmicMeter(str(script)), interval_s=0.5, clock=clock)
    assert monitor.interval_s == 1.0  # never more than once a second, whatever interval_s says

    async def scenario() -> None:
        await monitor.sample()
        clock.now = 0.25
        mark = monitor.mark()
        for clock.now in (1.0, 2.0):
            await monitor.sample()
        clock.now = 2.5
        energy = monitor.since(mark)
        assert energy is not None
        assert energy.seconds == 2.25 and energy.samples == 2
        assert energy.joules > 0
        assert energy.joules == pytest.approx(watts * 2.25)
        assert energy.avg_w == pytest.approx(watts)

    asyncio.run(scenario())
    assert monitor.power_w == pytest.approx(watts)


def test_changing_power_is_integrated_by_trapezoid(tmp_path: Path) -> None:
    busy = RECORDED.read_text()
    idle = busy.replace("current(7)=2.85400000A", "current(7)=0.71350000A")
    script, output = replaying(tmp_path, busy)
    busy_w, idle_w = expected_watts(busy), expected_watts(idle)
    assert idle_w < busy_w - 1.5
    clock = Clock()
    monitor = PowerMonitor(PmicMeter(str(script)), clock=clock)

    async def scenario() -> None:
        start = monitor.mark()
        await monitor.sample()
        output.write_text(idle)
        clock.now = 1.0
        await monitor.sample()
        assert monitor.power_w == pytest.approx(idle_w)
        energy = monitor.since(start)
        assert energy is not None and energy.samples == 2
        assert energy.joules == pytest.approx((busy_w + idle_w) / 2)

        clock.now = 0.5
        half = monitor.mark()
        clock.now = 1.0
        energy = monitor.since(half)
        assert energy is not None
        assert energy.joules == pytest.approx((busy_w + idle_w) / 2 * 0.5)

        clock.now = 1.2  # an answer shorter than one interval: the newest power times its length
        short = monitor.mark()
        clock.now = 1.5
        energy = monitor.since(short)
        assert energy is not None and energy.samples == 0
        assert energy.joules == pytest.approx(idle_w * 0.3)

    asyncio.run(scenario())


def test_no_reading_before_the_mark_gives_none(tmp_path: Path) -> None:
    script, _ = replaying(tmp_path, RECORDED.read_text())
    clock = Clock()
    monitor = PowerMonitor(PmicMeter(str(script)), clock=clock)
    early = monitor.mark()
    assert monitor.power_w is None and monitor.since(early) is None
    clock.now = -1.0
    before = monitor.mark()
    clock.now = 0.0
    asyncio.run(monitor.sample())
    clock.now = 1.0
    assert monitor.since(before) is None  # no reading reached back to the mark


def test_a_garbled_meter_is_one_warning_then_none_until_it_recovers(
        tmp_path: Path, events: Callable[[], list[dict[str, object]]]) -> None:
    script, output = replaying(tmp_path, RECORDED.read_text())
    clock = Clock()
    monitor = PowerMonitor(PmicMeter(str(script)), clock=clock)

    async def scenario() -> None:
        await monitor.sample()
        mark = monitor.mark()
        output.write_text('error=2 error_msg="Invalid arguments"\n')
        for clock.now in (1.0, 2.0, 3.0):
            await monitor.sample()
        assert monitor.power_w is None and monitor.since(mark) is None
        output.write_text(RECORDED.read_text())
        for clock.now in (4.0, 5.0):
            await monitor.sample()
        assert monitor.power_w == pytest.approx(expected_watts(RECORDED.read_text()))
        assert monitor.since(mark) is None  # the meter failed inside that span
        recovered = monitor.mark()
        clock.now = 6.0
        assert monitor.since(recovered) is not None

    asyncio.run(scenario())
    seen = events()
    warnings = [e for e in seen if e["level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["event"] == "power_meter_unreadable"
    assert "not a rail reading" in str(warnings[0]["error"])
    assert [e["event"] for e in seen] == ["power_meter_unreadable", "power_meter_recovered"]


def test_meter_none_measures_nothing(events: Callable[[], list[dict[str, object]]]) -> None:
    async def scenario() -> None:
        monitor = await PowerMonitor.open(PowerSettings(meter="none"))
        assert not monitor.metered
        mark = monitor.mark()
        await monitor.sample()
        await monitor.run()  # returns at once: there is nothing to sample
        assert monitor.power_w is None and monitor.since(mark) is None

    asyncio.run(scenario())
    assert [e["level"] for e in events()] == ["info"]


# --- the monitor as a task --------------------------------------------------------------

async def until(condition: Callable[[], bool], what: str) -> None:
    await eventually_async(condition, 20, what, 0.01)  # a guard against hanging, not a measure


def test_sampling_runs_beside_the_loop_and_cancels_cleanly(tmp_path: Path) -> None:
    go, pid_file = tmp_path / "go", tmp_path / "pid"
    script = vcgencmd(tmp_path, writes_pid(pid_file) +
                                f'while [ ! -e "{go}" ]; do sleep 0.01; done\n'
                                f'cat "{RECORDED}"\n')
    monitor = PowerMonitor(PmicMeter(str(script)))

    async def scenario() -> int:
        task = asyncio.create_task(monitor.run())
        await until(pid_file.exists, "running vcgencmd")  # and so is this coroutine
        assert monitor.power_w is None
        go.touch()
        await until(lambda: monitor.power_w is not None, "power reading")
        go.unlink()
        pid_file.unlink()
        await until(pid_file.exists, "next sample")  # a second later, it waits on "go"
        task.cancel()
        async with asyncio.timeout(20):  # a monitor waiting for a live child would hang here
            with pytest.raises(asyncio.CancelledError):
                await task
        return int(pid_file.read_text())

    pid = asyncio.run(scenario())
    assert monitor.power_w == pytest.approx(expected_watts(RECORDED.read_text()))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # cancelling the monitor killed and reaped the child


# --- RAPL ------------------------------------------------------------------------------

def test_rapl_counts_across_the_wrap(tmp_path: Path) -> None:
    package = rapl_zone(tmp_path, "intel-rapl:0", "package-0", RAPL_MAX_UJ - 300_000)
    core = rapl_zone(tmp_path, "intel-rapl:0:0", "core", 5_000_000)
    (tmp_path / "class" / "powercap" / "intel-rapl").mkdir()  # the control type: no counter
    clock = Clock()
    meter = RaplMeter(tmp_path)
    assert meter.zones() == [package]
    monitor = PowerMonitor(meter, interval_s=0.5, clock=clock)
    assert monitor.interval_s == 0.5

    async def scenario() -> None:
        await monitor.sample()
        mark = monitor.mark()
        assert monitor.power_w is None  # one counter reading is not a rate yet
        assert monitor.since(mark) is None
        package.write_text("1700000\n")  # wrapped: 300 000 µJ to the top, 1 µJ to 0, 1.7 J on
        core.write_text("9000000\n")  # part of the package: must not count twice
        clock.now = 2.0
        await monitor.sample()
        wrapped_uj = (RAPL_MAX_UJ - (RAPL_MAX_UJ - 300_000) + 1) + 1_700_000
        assert monitor.power_w == pytest.approx(wrapped_uj / 1e6 / 2.0)
        energy = monitor.since(mark)
        assert energy is not None
        assert energy.joules == pytest.approx(wrapped_uj / 1e6)

    asyncio.run(scenario())


def test_rapl_sums_packages_and_prefers_psys(tmp_path: Path) -> None:
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    rapl_zone(tmp_path, "intel-rapl:1", "package-1", 2_000_000)
    meter = RaplMeter(tmp_path)
    assert [p.parent.name for p in meter.zones()] == ["intel-rapl:0", "intel-rapl:1"]
    rapl_zone(tmp_path, "intel-rapl:2", "psys", 3_000_000)
    assert [p.parent.name for p in meter.zones()] == ["intel-rapl:2"]


def test_rapl_unreadable_or_garbled_is_a_meter_error(tmp_path: Path) -> None:
    counter = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1)
    counter.write_text("n/a\n")
    with pytest.raises(MeterError, match=r"intel-rapl:0/energy_uj: not a counter"):
        asyncio.run(RaplMeter(tmp_path).read())
    counter.unlink()
    counter.mkdir()  # present but unreadable
    with pytest.raises(MeterError, match=r"intel-rapl:0/energy_uj: cannot read"):
        asyncio.run(RaplMeter(tmp_path).read())
    with pytest.raises(MeterError, match="no intel-rapl zone"):
        asyncio.run(RaplMeter(tmp_path / "elsewhere").read())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a 0400 file anyway")
def test_root_only_rapl_says_so(tmp_path: Path) -> None:
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1).chmod(0o400)
    with pytest.raises(MeterError, match="root only"):
        asyncio.run(RaplMeter(tmp_path).read())


# --- auto ------------------------------------------------------------------------------

def test_auto_prefers_a_working_vcgencmd(tmp_path: Path) -> None:
    script, _ = replaying(tmp_path, RECORDED.read_text())
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1)
    meter = asyncio.run(open_meter(PowerSettings(vcgencmd=str(script)), tmp_path))
    assert meter.name == "vcgencmd"


def test_auto_falls_back_to_rapl(tmp_path: Path) -> None:
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1)
    settings = PowerSettings(vcgencmd=str(tmp_path / "absent"))
    assert asyncio.run(open_meter(settings, tmp_path)).name == "rapl"


def test_auto_with_a_garbled_vcgencmd_and_no_rapl_is_one_warning(
        tmp_path: Path, events: Callable[[], list[dict[str, object]]]) -> None:
    script, _ = replaying(tmp_path, "VDD_CORE_A current(7)=\n")
    clock = Clock()

    async def scenario() -> PowerMonitor:
        monitor = await PowerMonitor.open(PowerSettings(vcgencmd=str(script)), tmp_path,
                                          clock=clock)
        for clock.now in (0.0, 1.0):
            await monitor.sample()
        return monitor

    monitor = asyncio.run(scenario())
    assert monitor.meter.name == "none" and monitor.power_w is None
    assert [e["level"] for e in events()] == ["warning", "info"]  # the choice, then "none"


def test_auto_on_a_machine_without_meters_is_quiet(
        tmp_path: Path, events: Callable[[], list[dict[str, object]]]) -> None:
    settings = PowerSettings(vcgencmd=str(tmp_path / "absent"))
    monitor = asyncio.run(PowerMonitor.open(settings, tmp_path))
    assert not monitor.metered
    assert [e["level"] for e in events()] == ["info"]
