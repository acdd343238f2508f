"""paho-mqtt driven by the asyncio loop instead of its own network thread.

paho's "external event loop" interface tells us when its socket opens,
closes, and has something to write; we register the socket with the loop
(``add_reader`` / ``add_writer``) and call ``loop_read``, ``loop_write`` and,
every second, ``loop_misc`` (keepalive pings). Every paho callback then runs
on our loop: no hand-over between threads, no wake-up byte per message, no
lock. Connecting (a blocking ``socket.create_connection`` and TLS handshake)
is the one step that runs in a thread, with backoff from 1 to 60 s between
attempts, forever; :meth:`AsyncioDriver.hold_off` makes the next attempt wait
longer (a device whose session another client keeps taking over).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable

import paho.mqtt.client as paho

from appliance.logs import get_logger

log = get_logger("bridge")

MISC_EVERY_S = 1.0
READ_BURST = 64
"""Packets read per wake-up at most, so a flood cannot starve the rest of the loop."""
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0


class AsyncioDriver:
    """Runs ``client`` on ``loop``; :meth:`run` keeps it connected until :meth:`stop`.

    ``where`` names the broker in log lines; ``on_connect_failed(error)`` runs
    on the loop for each failed attempt.
    """

    def __init__(self, client: paho.Client, loop: asyncio.AbstractEventLoop, where: str,
                 on_connect_failed: Callable[[str], None] = lambda _e: None) -> None:
        self.client, self.loop, self.where = client, loop, where
        self.on_connect_failed = on_connect_failed
        self._sock: socket.socket | None = None
        self._closed = asyncio.Event()
        self._closed.set()
        self._stopping = False
        self._writing = False
        self._up = False
        self._hold_s = 0.0
        self._thread = threading.get_ident()  # the loop's thread (we are built on it)
        client.on_socket_open = self._opened
        client.on_socket_close = self._closing
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._no_write

    # paho calls these on whatever thread touches the socket: on the loop's own thread
    # (nearly always) they run at once; from the connecting thread they hop over.
    def _on_loop(self, handler: Callable[[socket.socket], None], sock: socket.socket) -> None:
        if threading.get_ident() == self._thread:
            handler(sock)
        else:
            self.loop.call_soon_threadsafe(handler, sock)

    def _opened(self, _c: paho.Client, _u: object, sock: socket.socket) -> None:
        self._on_loop(self._register, sock)

    def _closing(self, _c: paho.Client, _u: object, sock: socket.socket) -> None:
        self._on_loop(self._unregister, sock)

    def _want_write(self, _c: paho.Client, _u: object, sock: socket.socket) -> None:
        self._on_loop(self._add_writer, sock)

    def _no_write(self, _c: paho.Client, _u: object, sock: socket.socket) -> None:
        self._on_loop(self._remove_writer, sock)

    def _register(self, sock: socket.socket) -> None:
        # MQTT packets are small and each waits for an answer: with Nagle's algorithm a
        # PUBACK followed by a PUBLISH held the PUBLISH for the peer's delayed ACK (40 ms).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._writing = False
        self._closed.clear()
        self.loop.add_reader(sock, self._read, sock)

    def _unregister(self, sock: socket.socket) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
        if sock is self._sock:
            self._sock = None
            self._writing = False
            self._closed.set()

    def _read(self, sock: socket.socket) -> None:
        """Read every whole packet waiting (paho reads one per call), up to a burst."""
        for _ in range(READ_BURST):
            self.client.loop_read()
            if self._sock is not sock or not _has_data(sock):
                return

    def _add_writer(self, sock: socket.socket) -> None:
        if sock is self._sock and not self._writing:
            self._writing = True  # one epoll change per burst of writes, not per packet
            self.loop.add_writer(sock, self._write)

    def _remove_writer(self, sock: socket.socket) -> None:
        if sock is self._sock:
            self._writing = False
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_writer(sock)

    def _write(self) -> None:
        self.client.loop_write()
        if not self.client.want_write() and self._sock is not None:
            self._remove_writer(self._sock)

    async def run(self) -> None:
        """Connect, stay connected (keepalive), reconnect with backoff; forever."""
        delay = BACKOFF_START_S
        misc = asyncio.create_task(self._misc())
        try:
            while not self._stopping:
                try:
                    await asyncio.to_thread(self.client.reconnect)
                except (OSError, ValueError) as exc:
                    self.on_connect_failed(str(exc) or type(exc).__name__)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    continue
                await self._closed.wait()
                # A session that got its CONNACK starts the backoff over; a refused one not.
                delay = BACKOFF_START_S if self._up else min(delay * 2, BACKOFF_MAX_S)
                self._up = False
                wait, self._hold_s = max(delay, self._hold_s), 0.0
                if not self._stopping:
                    await asyncio.sleep(wait)
        finally:
            misc.cancel()

    def connected(self) -> None:
        """The broker accepted us (CONNACK success): the next drop retries after 1 s."""
        self._up = True

    def hold_off(self, seconds: float) -> None:
        """Wait at least ``seconds`` before the next connection attempt (once)."""
        self._hold_s = seconds

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(MISC_EVERY_S)
            if self._sock is not None:
                self.client.loop_misc()

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Disconnect cleanly (the DISCONNECT is written before the socket closes)."""
        self._stopping = True
        if self._sock is not None:
            self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), timeout_s)


def _has_data(sock: socket.socket) -> bool:
    """Whether more bytes wait on ``sock`` right now (without taking them)."""
    if isinstance(sock, ssl.SSLSocket):
        return sock.pending() > 0
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # BlockingIOError: nothing yet; anything else: loop_read will see it
        return False
