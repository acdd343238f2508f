"""What to do about each problem the state reports (``problems`` of ``<base>/state``).

The parts report what is wrong under a part's name (:meth:`Status.problem
<appliance.service.status.Status.problem>`); the Overview shows each with the
step that helps, the same advice as the rows of docs/faults.md.

    >>> [p.part for p in advise({"thermal": "the zone file is empty"})]
    ['thermal']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

ADVICE = {
    "model": "The model worker is restarting by itself. If this stays, open Health: run the "
             "doctor and read the log.",
    "journal": "The journal cannot be written: free space on the data_dir disk, or remount it "
               "read-write. Questions are answered once there is room.",
    "outbox": "Answers cannot be stored for sending: free space on the data_dir disk. They "
              "wait in memory and are retried every second.",
    "mqtt": "Another device uses this device_id (a cloned SD card): give each device its own "
            "device_id (docs/fleet.md).",
    "thermal": "The temperature cannot be read: check thermal.zone_path. The fan runs and the "
               "level holds, then it stays at least hot until the sensor reads again.",
    "voice": "Speech is off: check the microphone and the speaker (Health: doctor) and the "
             "voice settings, then restart the service.",
}
"""The step that helps, by part."""
DEFAULT_ADVICE = "Open Health: run the doctor and read the log."


@dataclass(frozen=True)
class Advice:
    """One problem, and what to do about it."""

    part: str
    problem: str
    advice: str

    def as_json(self) -> dict[str, Any]:
        """For the console's state."""
        return asdict(self)


def advise(problems: Mapping[str, str]) -> list[Advice]:
    """Each problem with its advice, by part name."""
    return [Advice(part, text, ADVICE.get(part, DEFAULT_ADVICE))
            for part, text in sorted(problems.items())]
