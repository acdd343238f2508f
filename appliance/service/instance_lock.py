"""One appliance per data_dir: an ``flock`` on ``<data_dir>/appliance.lock``.

Two supervisors on one data_dir would share a journal and an MQTT client id:
they answer every question twice and keep kicking each other off the broker.
The lock is held for the life of the process and released by the kernel
when it ends, however it ends.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from appliance.errors import ApplianceError


class AlreadyRunning(ApplianceError):
    """Another appliance holds this data_dir."""


class InstanceLock:
    """Holds ``<data_dir>/appliance.lock`` (with our pid in it) until :meth:`release`."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "appliance.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`AlreadyRunning` naming the holder's pid."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ApplianceError(f"{self.path}: cannot create the lock file: "
                                 f"{exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another appliance (pid {holder}) is already running on data_dir "
                f"{self.path.parent}; stop it first (systemctl stop appliance)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
