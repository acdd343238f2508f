"""Power meters, and the monitor that gives each answer its energy.

Configuration (``power:`` in the YAML file)::

    power:
      meter: auto        # auto | vcgencmd | rapl | none
      vcgencmd: vcgencmd # the command (or path) for the Pi's firmware tool
      interval_s: 0.5    # sampling interval; vcgencmd is never read faster than 1 Hz

Meters (each a :class:`PowerMeter`):

- ``vcgencmd`` (:mod:`appliance.power.pmic`): the Raspberry Pi 5's PMIC through
  ``vcgencmd pmic_read_adc``. The PMIC measures its own rails but not the 5 V
  input current, so the board's draw is an *estimate*,
  ``Σ(V·I) * 1.1451 + 0.5879`` W, an empirical fit of unverified origin that
  leaves out everything fed straight from 5 V: USB devices, PCIe/HAT+ cards,
  the fan, the GPIO 5 V pins. Good for comparing answers on one board; not a
  wall-socket figure. Each reading forks vcgencmd, hence at most one a second.
- ``rapl`` (:mod:`appliance.power.rapl`): the x86 powercap energy counters,
  processor (or platform, with ``psys``) only; root-only on current kernels.
- ``none``: nothing is measured.

``auto`` picks vcgencmd if the command exists and gives parseable rails, else
RAPL if it reads, else none (:func:`open_meter`).

The monitor (:mod:`appliance.power.monitor`) runs as its own asyncio task and
never sits on the generation's path::

    monitor = await PowerMonitor.open(settings.power)
    task = asyncio.create_task(monitor.run(), name="power")   # returns at once without a meter
    mark = monitor.mark()              # a generation starts
    energy = monitor.since(mark)       # it ends: Energy(joules, avg_w, seconds, samples) | None
    monitor.power_w                    # the newest watts for the state, or None

A meter that is absent, unreadable or garbled is one warning line (component
``power``); the monitor then gives ``None`` everywhere until the meter reads
again, which is one info line. Answers go on without energy.
"""

from appliance.power.auto import open_meter
from appliance.power.meter import MeterError, NoMeter, PowerMeter
from appliance.power.monitor import Energy, Mark, PowerMonitor
from appliance.power.pmic import PmicMeter, board_watts, parse_pmic_read_adc
from appliance.power.rapl import RaplMeter

__all__ = ["Energy", "Mark", "MeterError", "NoMeter", "PmicMeter", "PowerMeter",
           "PowerMonitor", "RaplMeter", "board_watts", "open_meter", "parse_pmic_read_adc"]
