"""``vcgencmd get_throttled``: the Raspberry Pi firmware's own throttling report.

Bits (from the Raspberry Pi documentation): 0 under-voltage, 1 ARM frequency
capped, 2 currently throttled, 3 soft temperature limit active; bits 16-19 are
the same four as "has occurred since boot".
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from appliance.errors import ApplianceError


@dataclass(frozen=True)
class ThrottleFlags:
    """The decoded ``get_throttled`` bits."""

    raw: int
    under_voltage: bool
    arm_capped: bool
    throttled: bool
    soft_temp_limit: bool
    under_voltage_occurred: bool
    arm_capped_occurred: bool
    throttled_occurred: bool
    soft_temp_limit_occurred: bool

    @property
    def limiting_now(self) -> bool:
        """The firmware is holding the CPU back right now (heat or power)."""
        return self.throttled or self.soft_temp_limit or self.arm_capped

    @classmethod
    def decode(cls, raw: int) -> ThrottleFlags:
        """Decode the integer value."""
        def bit(n: int) -> bool:
            return bool(raw >> n & 1)
        return cls(raw, bit(0), bit(1), bit(2), bit(3), bit(16), bit(17), bit(18), bit(19))


def parse_get_throttled(output: str) -> ThrottleFlags:
    """Decode ``vcgencmd get_throttled`` output such as ``throttled=0x50005``."""
    match = re.fullmatch(r"\s*throttled=(0x[0-9a-fA-F]+|\d+)\s*", output)
    if match is None:
        raise ApplianceError(f"vcgencmd: unexpected output {output.strip()[:40]!r}")
    return ThrottleFlags.decode(int(match.group(1), 0))


def read_throttled(command: str = "vcgencmd") -> ThrottleFlags | None:
    """Run ``vcgencmd get_throttled``; ``None`` where there is no vcgencmd (not a Pi)."""
    path = shutil.which(command)
    if path is None:
        return None
    try:
        done = subprocess.run([path, "get_throttled"], capture_output=True, text=True,
                              errors="replace", timeout=2, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        raise ApplianceError(f"vcgencmd get_throttled failed: {exc}") from exc
    return parse_get_throttled(done.stdout)
