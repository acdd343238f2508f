"""The MQTT bridge: one paho-mqtt v5 client, driven by our asyncio loop.

paho runs on the loop itself (:class:`~appliance.mqtt.aio.AsyncioDriver`), so
every callback, and all logic, runs there with nothing handed between
threads. Inbound QoS 1 messages are acknowledged manually, only once the handler has journaled
them (see :meth:`Bridge.ack`). What goes out, and the outbox that keeps answers
until their PUBACK, is the :class:`~appliance.mqtt.publisher.Publisher`'s.

Two devices with one ``device_id`` share one client id and take the session
from each other for ever; :class:`~appliance.mqtt.clash.Clash` tells from the
drops, names the clash (:attr:`Bridge.clash`) and says how long to back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from appliance.config import Settings
from appliance.config.secrets import read_password
from appliance.logs import get_logger
from appliance.mqtt.aio import AsyncioDriver
from appliance.mqtt.clash import Clash
from appliance.mqtt.contract import Topics
from appliance.mqtt.inbound import Inbound
from appliance.mqtt.publisher import Outbox, Publisher
from appliance.protocol.messages import Outgoing

log = get_logger("bridge")


class Bridge:
    """One MQTT v5 connection with a persistent session.

    ``on_message`` runs on the loop for every inbound message on ``subscriptions``;
    ``on_connected`` runs on the loop after each (re)connection, so that the
    owner can republish what a restarted broker forgot (status, discovery).
    A publish the broker refuses becomes an ``error`` message of our own;
    ``problem(kind, text or None)`` hears of the outbox's and the connection's health.
    """

    def __init__(self, settings: Settings, outbox: Outbox, subscriptions: list[str],
                 on_message: Callable[[Inbound], None],
                 on_connected: Callable[[], None] = lambda: None, *,
                 problem: Callable[[str, str | None], None] = lambda _k, _t: None) -> None:
        self.settings = settings
        self.topics = Topics.under(settings.base_topic)
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.on_connected = on_connected
        self.problem = problem
        self.connected = asyncio.Event()
        self.received = 0
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._task: asyncio.Task[None] | None = None
        mqtt = settings.mqtt
        self.client_id = mqtt.client_id or f"appliance-{settings.device_id}"
        self.client = client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                           protocol=paho.MQTTv5, manual_ack=True)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        if mqtt.username is not None:
            client.username_pw_set(mqtt.username, read_password(settings))
        if mqtt.tls is not None:
            tls = mqtt.tls
            client.tls_set(ca_certs=_str(tls.ca_file), certfile=_str(tls.cert_file),
                           keyfile=_str(tls.key_file), cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_publish = self._paho_publish
        client.suppress_exceptions = True  # a bug in a callback must not break paho's state
        client.enable_logger()
        self.publisher = Publisher(client, outbox, self._loop, self.connected, self.topics.error,
                                   self.on_change)
        self.driver = AsyncioDriver(client, self._loop, self.where, self._connect_failed)
        self.clash = Clash(self._loop, self.where, self.client_id, settings.device_id,
                           self.on_change)

    def on_change(self) -> None:
        """Report the outbox's and the connection's health."""
        self.problem("outbox", self.publisher.error)
        self.problem("mqtt", self.clash.text)

    @property
    def where(self) -> str:
        """``host:port`` of the broker, for log lines."""
        return f"{self.settings.mqtt.host}:{self.settings.mqtt.port}"

    # --- paho's callbacks: on the loop ---------------------------------------------------
    def _on_loop(self, handler: Callable[..., None], *args: object) -> None:
        """Run ``handler`` on the loop (paho may call back from the connecting thread)."""
        if threading.get_ident() == self._thread:
            handler(*args)
        else:
            self._loop.call_soon_threadsafe(handler, *args)

    def _paho_connect(self, _c: paho.Client, _u: object, _f: object, reason: ReasonCode,
                      _p: Properties | None) -> None:
        self._on_loop(self._connected, reason)

    def _paho_disconnect(self, _c: paho.Client, _u: object, _f: object, reason: ReasonCode,
                         _p: Properties | None) -> None:
        self._on_loop(self._disconnected, reason)

    def _paho_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        try:
            inbound = Inbound.from_paho(msg)
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            log.warning("unreadable_message", error=str(exc))
            if msg.qos:
                self.client.ack(msg.mid, msg.qos)
            return
        self.received += 1
        try:
            self.on_message(inbound)
        except Exception:  # the handler's own guard failed: never stop reading
            log.exception("inbound_handler_failed", topic=inbound.topic)

    def _paho_publish(self, _c: paho.Client, _u: object, mid: int, reason: ReasonCode,
                      _p: Properties) -> None:
        self._on_loop(self.publisher.published, mid, reason)

    # --- the loop ------------------------------------------------------------------------
    def _connected(self, reason: ReasonCode) -> None:
        if reason.is_failure:
            log.error("connect_refused", broker=self.where, reason=str(reason),
                      code=reason.value)
            return
        self.driver.connected()
        self.connected.set()
        own_events = f"{self.topics.base}/event/"
        for topic in self.subscriptions:
            # No local: our own events (GPIO) reach the rules directly, not via the broker.
            self.client.subscribe(topic, options=SubscribeOptions(
                qos=1, noLocal=topic.startswith(own_events)))
        self.publish(Outgoing(self.topics.status, b"online", retain=True))
        log.info("connected", broker=self.where, client_id=self.client_id)
        self.clash.connected()
        self.on_connected()
        self.on_change()

    def _connect_failed(self, error: str) -> None:
        log.warning("connect_failed", broker=self.where, reason=error,
                    hint="retrying with backoff up to 60 s")

    def _disconnected(self, reason: ReasonCode) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if self._closing:
            self.clash.cancel()
            log.info("disconnected", broker=self.where, reason="shutting down")
        elif (wait := self.clash.dropped(was, reason.value, str(reason))) is not None:
            self.driver.hold_off(wait)
        elif was:
            log.warning("disconnected", broker=self.where, reason=str(reason),
                        code=reason.value)
        if was:
            self.on_change()

    @property
    def healthy(self) -> bool:
        """The connection task runs (connected or retrying)."""
        return self._task is None or not self._task.done()

    def start(self) -> None:
        """Connect in the background (retrying forever) and resend the outbox of earlier runs."""
        mqtt = self.settings.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = mqtt.session_expiry_s
        self.publisher.resend()
        self.client.connect_async(mqtt.host, mqtt.port, keepalive=mqtt.keepalive_s,
                                  clean_start=False, properties=props)
        self._task = self._loop.create_task(self.driver.run(), name="mqtt")

    def ack(self, inbound: Inbound) -> None:
        """Acknowledge ``inbound`` to the broker (call once it is safely journaled)."""
        if inbound.qos > 0:
            self.client.ack(inbound.mid, inbound.qos)

    def publish(self, message: Outgoing) -> None:
        """Publish without the outbox, best effort (:meth:`Publisher.publish`)."""
        self.publisher.publish(message)

    def forward(self, message: Outgoing, then: Callable[[], None],
                otherwise: Callable[[], None]) -> None:
        """Hand ``message`` on, acknowledged or refused (:meth:`Publisher.forward`)."""
        self.publisher.forward(message, then, otherwise)

    def deliver(self, request_id: str | None, messages: list[Outgoing]) -> None:
        """Answer through the outbox (:meth:`Publisher.deliver`)."""
        self.publisher.deliver(request_id, messages)

    async def close(self, flush_s: float = 3.0) -> None:
        """Publish ``offline``, wait up to ``flush_s`` for outstanding PUBACKs, disconnect."""
        self._closing = True
        if self.connected.is_set():
            self.publisher.track(-1, Outgoing(self.topics.status, b"offline", retain=True))
            await self.publisher.flush(flush_s)
        await self.driver.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _str(path: object) -> str | None:
    return None if path is None else str(path)

