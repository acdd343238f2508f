"""The systemd notify protocol: datagrams to ``$NOTIFY_SOCKET``.

Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from appliance.logs import get_logger

log = get_logger("notify")


class Notifier:
    """Sends ``READY=1``, ``STATUS=...``, ``WATCHDOG=1`` and ``STOPPING=1`` to systemd."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_s: float | None = int(usec) / 1e6 if watched else None
        self._sock: socket.socket | None = None
        if self._address:
            # Non-blocking: a reader that falls behind (a full datagram queue holds only
            # ten) must cost a lost notification, never a frozen event loop.
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                       | socket.SOCK_NONBLOCK)

    def send(self, message: str) -> None:
        """Send one notification (lines ``KEY=value``)."""
        if self._sock is None:
            return
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            log.warning("notify_failed", error=str(exc))

    def ready(self, status: str) -> None:
        """Startup is complete."""
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        """A one-line status for ``systemctl status``."""
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """We are alive and healthy."""
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self.send("STOPPING=1\nSTATUS=stopping")
