"""The MQTT bridge: paho-mqtt on its own network thread, handed over to our asyncio loop.

Every paho callback only hands over to the loop (inbound messages through a
deque, so that a burst costs one wake-up); all logic runs on the loop. Inbound
QoS 1 messages are acknowledged manually, only once the handler has journaled
them (see :meth:`Bridge.ack`). Answers are written to the journal's outbox
first and removed when their PUBACK arrives, so neither a broker restart nor a
killed supervisor loses one.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.logs import get_logger
from appliance.mqtt.contract import Topics
from appliance.service.journal import Journal
from appliance.service.requests import Outgoing

log = get_logger("bridge")


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


def _client_key(props: Properties | None) -> str:
    """Who asked, for rate limiting: a ``client`` or ``client_id`` user property."""
    for key, value in getattr(props, "UserProperty", None) or ():
        if key in ("client", "client_id"):
            return str(value)
    return ""


def read_password(settings: Settings) -> str | None:
    """The MQTT password from ``mqtt.password_file`` or ``$<mqtt.password_env>``."""
    mqtt = settings.mqtt
    if mqtt.password_file is not None:
        return mqtt.password_file.read_text(encoding="utf-8").strip()
    if mqtt.password_env is not None:
        value = os.environ.get(mqtt.password_env)
        if value is None:
            raise ApplianceError(f"mqtt.password_env names ${mqtt.password_env}, which is not set")
        return value
    return None


class Bridge:
    """One MQTT v5 connection with a persistent session.

    ``on_message`` runs on the loop for every inbound message on ``subscriptions``;
    ``on_connected`` runs on the loop after each (re)connection, so that the
    owner can republish what a restarted broker forgot (status, discovery).
    """

    def __init__(self, settings: Settings, journal: Journal, subscriptions: list[str],
                 on_message: Callable[[Inbound], None],
                 on_connected: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.topics = Topics.under(settings.base_topic)
        self.journal = journal
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.on_connected = on_connected
        self.connected = asyncio.Event()
        self.received = 0
        self._loop = asyncio.get_running_loop()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox key
        # Handed over in batches: one loop wake-up per burst, not per message.
        self._inbox: collections.deque[Inbound] = collections.deque()
        self._delivered = asyncio.Event()
        mqtt = settings.mqtt
        client_id = mqtt.client_id or f"appliance-{settings.device_id}"
        self.client = client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                           protocol=paho.MQTTv5, manual_ack=True)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        if mqtt.username is not None:
            client.username_pw_set(mqtt.username, read_password(settings))
        if mqtt.tls is not None:
            client.tls_set(ca_certs=_str(mqtt.tls.ca_file), certfile=_str(mqtt.tls.cert_file),
                           keyfile=_str(mqtt.tls.key_file), cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(1, 60)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_publish = self._paho_publish
        client.enable_logger()

    # --- paho's thread: hand over and return --------------------------------------------
    def _paho_connect(self, _c: paho.Client, _u: object, _f: object, reason: ReasonCode,
                      _p: Properties | None) -> None:
        self._loop.call_soon_threadsafe(self._connected, reason)

    def _paho_disconnect(self, _c: paho.Client, _u: object, _f: object, reason: ReasonCode,
                         _p: Properties | None) -> None:
        self._loop.call_soon_threadsafe(self._disconnected, reason)

    def _paho_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        inbound = Inbound(msg.topic, msg.payload, msg.qos, msg.mid,
                          getattr(props, "ResponseTopic", None),
                          getattr(props, "CorrelationData", None), _client_key(props))
        self._inbox.append(inbound)
        if len(self._inbox) == 1:  # otherwise a drain is already due and will take this too
            self._loop.call_soon_threadsafe(self._drain_inbox)

    def _paho_publish(self, _c: paho.Client, _u: object, mid: int, _r: ReasonCode,
                      _p: Properties) -> None:
        self._loop.call_soon_threadsafe(self._published, mid)

    # --- the loop ------------------------------------------------------------------------
    def _connected(self, reason: ReasonCode) -> None:
        if reason.is_failure:
            log.error("connect_refused", reason=str(reason))
            return
        for topic in self.subscriptions:
            self.client.subscribe(topic, qos=1)
        self.publish(Outgoing(self.topics.status, b"online", retain=True))
        self.connected.set()
        log.info("connected", host=self.settings.mqtt.host, port=self.settings.mqtt.port)
        self.on_connected()

    def _disconnected(self, reason: ReasonCode) -> None:
        if self.connected.is_set():
            log.warning("disconnected", reason=str(reason))
        self.connected.clear()

    def _drain_inbox(self) -> None:
        while self._inbox:
            self.received += 1
            self.on_message(self._inbox.popleft())

    def _published(self, mid: int) -> None:
        key = self._inflight.pop(mid, None)
        if key is not None:
            self.journal.delivered(key)
            if not self._inflight:
                self._delivered.set()

    def start(self) -> None:
        """Connect in the background (retrying forever) and resend the outbox of earlier runs."""
        mqtt = self.settings.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = mqtt.session_expiry_s
        for key, message in self.journal.outbox():
            self._publish_tracked(key, message)
        self.client.connect_async(mqtt.host, mqtt.port, keepalive=mqtt.keepalive_s,
                                  clean_start=False, properties=props)
        self.client.loop_start()

    def ack(self, inbound: Inbound) -> None:
        """Acknowledge ``inbound`` to the broker (call once it is safely journaled)."""
        if inbound.qos > 0:
            self.client.ack(inbound.mid, inbound.qos)

    def publish(self, message: Outgoing) -> None:
        """Publish without the outbox: status, state, stream chunks."""
        self._send(message)

    def deliver(self, request_id: str | None, messages: list[Outgoing]) -> None:
        """Answer: retire ``request_id`` from the journal and publish via the outbox, atomically."""
        for key, message in zip(self.journal.answer(request_id, messages), messages,
                                strict=True):
            self._publish_tracked(key, message)

    def _publish_tracked(self, key: int, message: Outgoing) -> None:
        """Publish and remember ``key``, so that its PUBACK retires it (-1: not journaled)."""
        info = self._send(message)
        self._delivered.clear()
        self._inflight[info.mid] = key

    def _send(self, message: Outgoing) -> paho.MQTTMessageInfo:
        return self.client.publish(message.topic, message.payload, qos=message.qos,
                                   retain=message.retain, properties=_props(message))

    async def close(self, flush_s: float = 3.0) -> None:
        """Publish ``offline``, wait up to ``flush_s`` for outstanding PUBACKs, disconnect."""
        if self.connected.is_set():
            self._publish_tracked(-1, Outgoing(self.topics.status, b"offline", retain=True))
            try:
                await asyncio.wait_for(self._delivered.wait(), flush_s)
            except TimeoutError:
                log.warning("flush_timeout", unacknowledged=len(self._inflight))
        self.client.disconnect()
        self.client.loop_stop()


def _str(path: os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


def _props(message: Outgoing) -> Properties | None:
    if message.correlation is None:
        return None
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = message.correlation
    return props
