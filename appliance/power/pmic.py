"""The Raspberry Pi 5's PMIC, read through ``vcgencmd pmic_read_adc``.

The PMIC (a Renesas DA9091 on the Pi 5) measures current and voltage on the
rails it generates. ``pmic_read_adc`` prints one rail per line, the name
right-aligned: twelve ``NAME_A current(N)=0.12199130A`` lines, then
``NAME_V volt(N)=3.60605200V`` lines. Twelve rails have both, paired here by
stripping ``_A``/``_V``. ``EXT5V_V`` (the 5 V input) and ``BATT_V`` (the RTC
cell) have a voltage only: the board's input current, and so its input power,
is not measured at all.

The board estimate is ``total = Σ(V·I) * 1.1451 + 0.5879`` W over the paired
rails (from leukipp/touchkio #35). Read it as a rough figure:

- the factor and offset are empirical, fitted on one setup, and their origin is
  unverified; they stand for the regulators' losses and the parts the PMIC does
  not feed;
- anything powered straight from the 5 V input is missing: USB devices, a PCIe
  or HAT+ card, a fan on the fan header, the 5 V GPIO pins. An NVMe drive or a
  USB microphone can add watts the estimate never sees.

It is good for comparing answers, thread counts and thermal levels on one
board, not for sizing a power supply.

Each reading forks vcgencmd, which asks the firmware over the mailbox; frequent
calls have caused audio xruns elsewhere (zynthian-ui #412), so the meter is read
at most once a second. vcgencmd needs root or the ``video`` group, which the
installer gives the ``appliance`` user.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
from typing import Literal

from appliance.power.meter import MeterError

SCALE = 1.1451
"""Σ(V·I) over the PMIC rails, times this, plus :data:`OFFSET_W`, estimates the board's draw."""
OFFSET_W = 0.5879
"""The constant part of the board estimate, in watts."""
MAX_BOARD_W = 30.0
"""More than a Pi 5 can draw (5 A at 5.1 V from the official supply): a garbled reading."""

_LINE = re.compile(r"\s*(?P<name>\S+)_(?P<suffix>[AV])\s+(?P<kind>current|volt)\(\d+\)"
                   r"=(?P<value>[-+0-9.eE]+)(?P<unit>[AV])\s*")
_UNIT = {"current": "A", "volt": "V"}


def parse_pmic_read_adc(output: str, source: str = "vcgencmd pmic_read_adc"
                        ) -> dict[str, tuple[float, float]]:
    """The rails that report both, as ``{name: (volts, amps)}``.

    Raises :class:`MeterError`, naming ``source`` and the line, for any line that
    is not a rail reading or holds a value that is not a number, and for output
    without a single rail that has both (an older firmware's ``error=...`` line).
    """
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for number, line in enumerate(output.splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line)
        if match is None or match["suffix"] != match["unit"] or \
                _UNIT[match["kind"]] != match["unit"]:
            raise MeterError(f"{source}: line {number}: not a rail reading: "
                             f"{line.strip()[:60]!r}")
        try:
            value = float(match["value"])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise MeterError(f"{source}: line {number}: not a measurement: "
                             f"{line.strip()[:60]!r}")
        (amps if match["unit"] == "A" else volts)[match["name"]] = value
    rails = {name: (volts[name], amps[name]) for name in amps if name in volts}
    if not rails:
        raise MeterError(f"{source}: no rail with both a current and a voltage "
                         f"in {output.strip()[:60]!r}")
    return rails


def board_watts(rails: dict[str, tuple[float, float]]) -> float:
    """The board estimate from the paired rails: ``Σ(V·I) * SCALE + OFFSET_W``."""
    return sum(v * i for v, i in rails.values()) * SCALE + OFFSET_W


class PmicMeter:
    """Runs ``<command> pmic_read_adc`` as a child process and estimates the board's watts.

    The command is looked up on ``PATH`` at every read until it is found, so a
    meter configured before vcgencmd is installed starts working when it is.
    """

    name = "vcgencmd"
    kind: Literal["watts", "joules"] = "watts"
    min_interval_s = 1.0

    def __init__(self, command: str = "vcgencmd", timeout_s: float = 5.0) -> None:
        self.command = command
        self.timeout_s = timeout_s

    async def read(self) -> float:
        """The board estimate in watts, from one run of vcgencmd."""
        path = shutil.which(self.command)
        if path is None:
            raise MeterError(f"power.vcgencmd: {self.command!r} is not an executable "
                             f"on PATH")
        source = f"{self.command} pmic_read_adc"
        try:
            child = await asyncio.create_subprocess_exec(
                path, "pmic_read_adc", stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise MeterError(f"{source}: cannot run: {exc.strerror}") from exc
        try:
            out, err = await asyncio.wait_for(child.communicate(), self.timeout_s)
        except TimeoutError:
            raise MeterError(f"{source}: no answer in {self.timeout_s:g} s") from None
        finally:
            if child.returncode is None:  # timed out, or the monitor was cancelled
                child.kill()
                await child.wait()
        if child.returncode != 0:
            why = err.decode(errors="replace").strip().splitlines() or ["no message"]
            raise MeterError(f"{source}: exit status {child.returncode}: {why[0][:80]} "
                             f"(it needs root or the video group)")
        watts = board_watts(parse_pmic_read_adc(out.decode(errors="replace"), source))
        if not 0.0 < watts <= MAX_BOARD_W:
            raise MeterError(f"{source}: {watts:.1f} W is not what a Pi 5 can draw")
        return watts
