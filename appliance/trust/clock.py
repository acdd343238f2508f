"""The newest time this device has seen, so that a clock wrong at boot cannot revive old metadata.

TUF refuses metadata past its ``expires``, by the device's clock. A Pi without
an RTC battery boots with the clock it saved at shutdown (``fake-hwclock``) or
with 1970, and an offline device may keep that wrong time for days: by its clock,
metadata that expired long ago looks fresh, which is exactly the "freeze" attack
expiry is there to stop (a mirror that keeps serving an old, valid-looking state).

So expiry is judged against a *reference time*: the later of the clock and a
high-water mark kept in the data_dir. The mark only moves forward, and only from
evidence that cannot be wrong in the device's own favour:

- the time the site signed the newest timestamp metadata the device trusted
  (``x-appliance-signed-at``, written by :mod:`.repository` inside the signed
  part, so a mirror cannot forge it);
- the system clock, but only once systemd-timesyncd says it is synchronized.

What this cannot do: it cannot tell the real time. A device whose clock is
behind still accepts metadata that expired between the mark and the real now. A
clock that is *ahead* makes good metadata look expired; that refuses updates (it
never stops a running appliance, nor ``models verify`` offline) until the site
re-signs or the mark file (``<data_dir>/trust/clock``) is removed.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from tuf.api.metadata import Signed

SIGNED_AT = "x-appliance-signed-at"
"""The signed field of timestamp metadata holding when the site signed it (ISO 8601, UTC)."""

SYNCHRONIZED = Path("/run/systemd/timesync/synchronized")
"""Created by systemd-timesyncd once the clock has been set from a time server."""


def signed_at(signed: Signed) -> datetime | None:
    """When the site signed ``signed``, if it says (only our repository writes the field)."""
    value = signed.unrecognized_fields.get(SIGNED_AT)
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def clock_synchronized(flag: Path = SYNCHRONIZED) -> bool:
    """Whether the system clock has been set from a time server since boot."""
    return flag.exists()


class ClockMark:
    """A high-water mark of time, in one small file that only ever moves forward."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def seen(self) -> datetime | None:
        """The newest time recorded, or ``None`` (no file, or not a time)."""
        try:
            when = datetime.fromisoformat(self.path.read_text().strip())
        except (OSError, ValueError):
            return None
        return when if when.tzinfo is not None else None

    def reference(self, now: datetime) -> datetime:
        """The time to judge expiry by: ``now``, or the mark when the clock is behind it."""
        seen = self.seen()
        return max(now, seen) if seen is not None else now

    def raise_to(self, when: datetime) -> None:
        """Record ``when`` if it is newer than the mark (atomically: a crash keeps the old one)."""
        seen = self.seen()
        if seen is not None and when <= seen:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(when.astimezone(UTC).isoformat() + "\n")
        os.replace(tmp, self.path)
