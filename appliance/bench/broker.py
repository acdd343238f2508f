"""A throwaway mosquitto on a free loopback port, for benchmarks and tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as paho

from appliance.errors import ApplianceError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise ApplianceError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


class LocalBroker:
    """mosquitto on 127.0.0.1 with persistence in ``workdir``, so sessions survive restarts.

    ``extra`` is appended to its configuration (a password file, say); ``port``
    picks the port (default: a free one).
    """

    def __init__(self, workdir: Path, extra: str = "", port: int | None = None) -> None:
        if shutil.which("mosquitto") is None:
            raise ApplianceError("mosquitto is not installed (apt-get install mosquitto)")
        self.port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + ("" if "allow_anonymous" in extra else "allow_anonymous true\n") +
            f"persistence true\npersistence_location {workdir}/\nmax_queued_messages 0\n"
            f"log_dest file {workdir}/mosquitto.log\n"
            "set_tcp_nodelay true\n"  # as provisioning/mosquitto configures a site broker
            # As root (CI), stay root: the files live in private temporary directories.
            + ("user root\n" if os.geteuid() == 0 else "") + extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the broker and wait for its port."""
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        """Stop it cleanly (it saves its persistence file)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def tcp_nodelay(client: paho.Client) -> None:
    """Turn Nagle's algorithm off on a connected bench client's socket.

    A client that PUBACKs what it received and then publishes again otherwise
    holds the publish for the broker's delayed ACK (40 ms): the client's delay,
    not the path a benchmark measures.
    """
    sock = client.socket()
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
