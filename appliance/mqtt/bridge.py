"""The MQTT bridge: one paho-mqtt v5 client, driven by our asyncio loop.

paho runs on the loop itself (:class:`~appliance.mqtt.aio.AsyncioDriver`), so
every callback, and all logic, runs there with nothing handed between
threads. Inbound QoS 1 messages are acknowledged manually, only once the handler has journaled
them (see :meth:`Bridge.ack`). Answers are written to the outbox first and
removed when their PUBACK arrives, so neither a broker restart nor a killed
supervisor loses one. An outbox that cannot be written (disk full) keeps the
answers in memory and tries again every second; a publish the broker refuses
(PUBACK reason code 0x80 or above) is reported, never taken for delivered.

Two devices with one ``device_id`` share one client id and take the session
from each other for ever; :class:`~appliance.mqtt.clash.Clash` tells from the
drops, names the clash (:attr:`Bridge.clash`) and says how long to back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from appliance.config import Settings
from appliance.config.secrets import read_password
from appliance.errors import ApplianceError
from appliance.logs import get_logger
from appliance.mqtt.aio import AsyncioDriver
from appliance.mqtt.clash import Clash
from appliance.mqtt.contract import Topics
from appliance.protocol.messages import Outgoing, error_message

log = get_logger("bridge")

RETRY_S = 1.0


class Outbox(Protocol):
    """Where answers wait for their PUBACK (the journal)."""

    def answer(self, request_id: str | None, messages: list[Outgoing]) -> list[int]:
        """Retire ``request_id`` and store ``messages`` atomically; returns their keys."""

    def outbox(self) -> list[tuple[int, Outgoing]]:
        """Every stored message not yet acknowledged."""

    def delivered(self, key: int) -> None:
        """Message ``key`` is done with."""


@dataclass(frozen=True)
class Inbound:
    """A received message, with the MQTT v5 properties we use."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    response_topic: str | None
    correlation: bytes | None
    client: str
    hops: int = 0


def _user_properties(props: Properties | None) -> tuple[str, int]:
    """The ``client`` (or ``client_id``) and ``hops`` user properties.

    The client names the asker for rate limiting; hops count how often a fleet
    ask has been handed on.
    """
    client, hops = "", 0
    for key, value in getattr(props, "UserProperty", None) or ():
        if key in ("client", "client_id"):
            client = str(value)[:64]
        elif key == "hops" and str(value).isdigit():
            hops = min(int(value), 99)
    return client, hops


def _request_id(payload: bytes) -> str | None:
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    value = body.get("id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


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
        self.store = outbox
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.on_connected = on_connected
        self.problem = problem
        self.connected = asyncio.Event()
        self.received = 0
        self.outbox_error: str | None = None
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._inflight: dict[int, tuple[int, Outgoing]] = {}  # paho mid -> outbox key, message
        self._task: asyncio.Task[None] | None = None
        self._forwarded: dict[int, tuple[Callable[[], None], Callable[[], None]]] = {}
        self._undelivered: list[tuple[str | None, list[Outgoing]]] = []
        self._delivered = asyncio.Event()
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
        self.driver = AsyncioDriver(client, self._loop, self.where, self._connect_failed)
        self.clash = Clash(self._loop, self.where, self.client_id, settings.device_id,
                           self.on_change)

    def on_change(self) -> None:
        """Report the outbox's and the connection's health."""
        self.problem("outbox", self.outbox_error)
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
            props = getattr(msg, "properties", None)
            inbound = Inbound(msg.topic, msg.payload, msg.qos, msg.mid,
                              getattr(props, "ResponseTopic", None),
                              getattr(props, "CorrelationData", None),
                              *_user_properties(props))
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
        self._on_loop(self._published, mid, reason)

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

    def _published(self, mid: int, reason: ReasonCode | None) -> None:
        entry = self._inflight.pop(mid, None)
        failed = reason is not None and reason.is_failure
        if entry is not None:
            key, message = entry
            if key >= 0:
                self._retire(key)
            if failed:
                self._refused(message, str(reason), reason.value)
        then = self._forwarded.pop(mid, None)
        if then is not None:
            then[1 if failed else 0]()
        if not self._inflight:
            self._delivered.set()

    def _retire(self, key: int) -> None:
        try:
            self.store.delivered(key)
        except ApplianceError as exc:  # it will be sent once more after a restart: harmless
            log.warning("outbox_retire_failed", error=str(exc))

    def _refused(self, message: Outgoing, reason: str, code: int) -> None:
        request_id = _request_id(message.payload)
        log.error("publish_refused", topic=message.topic, reason=reason, code=code,
                  request_id=request_id)
        if message.topic != self.topics.error:
            self.deliver(None, [error_message(
                self.topics.error, message.topic, f"the broker refused the message: {reason}"
                + (f" (reason code 0x{code:02X})" if code else ""), request_id)])

    def start(self) -> None:
        """Connect in the background (retrying forever) and resend the outbox of earlier runs."""
        mqtt = self.settings.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = mqtt.session_expiry_s
        for key, message in self.store.outbox():
            self._publish_tracked(key, message)
        self.client.connect_async(mqtt.host, mqtt.port, keepalive=mqtt.keepalive_s,
                                  clean_start=False, properties=props)
        self._task = self._loop.create_task(self.driver.run(), name="mqtt")

    def ack(self, inbound: Inbound) -> None:
        """Acknowledge ``inbound`` to the broker (call once it is safely journaled)."""
        if inbound.qos > 0:
            self.client.ack(inbound.mid, inbound.qos)

    def publish(self, message: Outgoing) -> None:
        """Publish without the outbox: state, stream chunks, transcripts.

        Best effort: while disconnected such messages are dropped, not piled up
        in memory (the state is published again on every connection).
        """
        if self.connected.is_set():
            self._send(message)

    def forward(self, message: Outgoing, then: Callable[[], None],
                otherwise: Callable[[], None]) -> None:
        """Publish ``message``; ``then()`` once the broker has it, ``otherwise()`` if it refuses.

        For handing a message on: acknowledge the original only in ``then``, so a
        crash in between makes the broker redeliver it rather than lose it.
        """
        if not self.connected.is_set():
            otherwise()
            return
        info = self._send(message)
        if info is None:
            otherwise()
            return
        self._delivered.clear()
        self._inflight[info.mid] = (-1, message)
        self._forwarded[info.mid] = (then, otherwise)

    def deliver(self, request_id: str | None, messages: list[Outgoing]) -> None:
        """Answer: retire ``request_id`` and publish ``messages`` via the outbox, atomically.

        When the outbox cannot be written, the answer waits in memory and is
        tried again every second; errors that have no request to retire are
        published at once without the outbox instead.
        """
        try:
            keys = self.store.answer(request_id, messages)
        except ApplianceError as exc:
            self._outbox_failed(str(exc))
            if request_id is None:
                for message in messages:
                    self.publish(message)
                return
            self._undelivered.append((request_id, messages))
            return
        for key, message in zip(keys, messages, strict=True):
            self._publish_tracked(key, message)

    def _outbox_failed(self, error: str) -> None:
        if self.outbox_error is None:
            log.error("outbox_unwritable", error=error,
                      hint="answers wait in memory and are retried every second")
            self._loop.call_later(RETRY_S, self._retry_undelivered)
        self.outbox_error = error
        self.on_change()

    def _retry_undelivered(self) -> None:
        waiting, self._undelivered = self._undelivered, []
        self.outbox_error = None
        for request_id, messages in waiting:
            self.deliver(request_id, messages)
        if self.outbox_error is None:
            log.info("outbox_writable", delivered=len(waiting))
            self.on_change()
        else:
            self._loop.call_later(RETRY_S, self._retry_undelivered)

    def _publish_tracked(self, key: int, message: Outgoing) -> None:
        """Publish and remember ``key``, so that its PUBACK retires it (-1: not journaled)."""
        info = self._send(message)
        if info is None:  # paho refused it outright: it would fail on every resend too
            if key >= 0:
                self._retire(key)
            return
        self._delivered.clear()
        self._inflight[info.mid] = (key, message)

    def _send(self, message: Outgoing) -> paho.MQTTMessageInfo | None:
        try:
            return self.client.publish(message.topic, message.payload, qos=message.qos,
                                       retain=message.retain, properties=_props(message))
        except (ValueError, TypeError) as exc:
            self._refused(message, str(exc), 0)
            return None

    async def close(self, flush_s: float = 3.0) -> None:
        """Publish ``offline``, wait up to ``flush_s`` for outstanding PUBACKs, disconnect."""
        self._closing = True
        if self.connected.is_set():
            self._publish_tracked(-1, Outgoing(self.topics.status, b"offline", retain=True))
            try:
                await asyncio.wait_for(self._delivered.wait(), flush_s)
            except TimeoutError:
                log.warning("flush_timeout", unacknowledged=len(self._inflight))
        await self.driver.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _str(path: object) -> str | None:
    return None if path is None else str(path)


def _props(message: Outgoing) -> Properties | None:
    if message.correlation is None and message.response_topic is None \
            and not message.user_properties:
        return None
    props = Properties(PacketTypes.PUBLISH)
    if message.correlation is not None:
        props.CorrelationData = message.correlation
    if message.response_topic is not None:
        props.ResponseTopic = message.response_topic
    if message.user_properties:
        props.UserProperty = list(message.user_properties)
    return props
