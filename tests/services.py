"""Real services for tests: a mosquitto broker, paho peers, and ``appliance run`` itself."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from gpiozero.pins import Factory
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.bench.broker import LocalBroker as Broker
from appliance.config import Settings
from appliance.service.supervisor import Supervisor

__all__ = ["ApplianceProcess", "Broker", "Message", "NotifySocket", "Peer"]


@dataclass(frozen=True)
class Message:
    """A message a test peer received."""

    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None

    def json(self) -> Any:
        """The payload as JSON."""
        return json.loads(self.payload)


class Peer:
    """A real paho MQTT v5 client that records what it receives."""

    def __init__(self, port: int, subscribe: list[str], client_id: str | None = None,
                 auth: tuple[str, str] | None = None) -> None:
        self.messages: queue.Queue[Message] = queue.Queue()
        self.seen: list[Message] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=client_id or f"peer-{os.getpid()}-{id(self)}")
        self._subscribed = queue.Queue[int]()
        if auth is not None:
            self.client.username_pw_set(*auth)

        def on_connect(c: paho.Client, *_: object) -> None:
            for topic in subscribe:
                c.subscribe(topic, qos=1)

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.put(1)
        self.client.on_message = lambda _c, _u, m: self.messages.put(Message(
            m.topic, m.payload, m.retain, getattr(m.properties, "CorrelationData", None)))
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        for _ in subscribe:
            self._subscribed.get(timeout=10)

    def publish(self, topic: str, payload: bytes | str, *, response_topic: str | None = None,
                correlation: bytes | None = None, client: str | None = None) -> None:
        """Publish QoS 1 with optional v5 properties, and wait until the broker has it."""
        props = Properties(PacketTypes.PUBLISH)
        if response_topic:
            props.ResponseTopic = response_topic
        if correlation is not None:
            props.CorrelationData = correlation
        if client:
            props.UserProperty = [("client", client)]
        info = self.client.publish(topic, payload, qos=1, properties=props)
        info.wait_for_publish(10)

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 60,
                 after: int = 0) -> Message:
        """The first received message, old or new, that meets ``predicate``.

        ``after``: only the ``after``-th received message and those since count.
        """
        for message in self.seen[after:]:
            if predicate(message):
                return message
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching message; saw: "
                                   + ", ".join(f"{m.topic}={m.payload[:80]!r}"
                                               for m in self.seen[-10:]))
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(message)
            if predicate(message):
                return message

    def drain(self, seconds: float) -> list[Message]:
        """Collect everything that arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.seen.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return self.seen

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


class NotifySocket:
    """A unix datagram socket standing in for systemd's ``$NOTIFY_SOCKET``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[str] = []

    def wait_for(self, line: str, timeout: float = 60) -> None:
        """Wait until a datagram containing ``line`` (a whole ``KEY=value`` line) arrives."""
        deadline = time.monotonic() + timeout
        while not any(line in d.splitlines() for d in self.received):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {line!r}; got {self.received}")
            self.sock.settimeout(left)
            try:
                self.received.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def wait_for_count(self, line: str, count: int, timeout: float = 60) -> None:
        """Wait until ``count`` datagrams in all (counting those before) hold ``line``."""
        deadline = time.monotonic() + timeout
        while sum(line in d.splitlines() for d in self.received) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"fewer than {count} {line!r}; got {len(self.received)}")
            self.sock.settimeout(left)
            try:
                self.received.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        """Close and remove the socket."""
        self.sock.close()
        self.path.unlink(missing_ok=True)


class ApplianceProcess:
    """``python -m appliance run`` as systemd would start it, with a notify socket."""

    def __init__(self, workdir: Path, config: Path, env: dict[str, str] | None = None) -> None:
        self.workdir, self.config = workdir, config
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: NotifySocket | None = None
        self.runs = 0
        self.command = [sys.executable, "-m", "appliance", "--config", str(config), "run"]

    def start(self, wait_ready: bool = True) -> None:
        """Start it; by default wait for ``READY=1``."""
        self.runs += 1
        self.notify = NotifySocket(self.workdir / f"notify-{self.runs}.sock")
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), **self.extra_env}
        self.log = (self.workdir / f"run-{self.runs}.log").open("wb")
        self.proc = subprocess.Popen(self.command, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if wait_ready:
            self.notify.wait_for("READY=1")

    def worker_pid(self) -> int:
        """The pid of the model worker child."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0])

    def kill(self) -> None:
        """SIGKILL the supervisor and its worker, as a crash would."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM, as systemd stops it; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Make sure nothing is left running."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        if self.notify is not None:
            self.notify.close()


def run_supervisor(settings: Settings, config: Path, pin_factory: Factory | None,
                   action: Callable[[Supervisor], Awaitable[None]]) -> None:
    """Run a real supervisor in this process until it is idle, do ``action``, stop it."""

    async def scenario() -> None:
        supervisor = Supervisor(settings, config, pin_factory=pin_factory)
        running = asyncio.create_task(supervisor.run())
        async with asyncio.timeout(300):  # a guard against a supervisor that never gets idle
            while supervisor.status.state != "idle":
                await asyncio.sleep(0.05)
        try:
            await action(supervisor)
        finally:  # a failed action still shuts the supervisor down, as SIGTERM would
            supervisor.stop.set()
            code = await running
        assert code == 0

    asyncio.run(scenario())
