"""Every way a message leaves the bridge, each followed to its PUBACK.

Answers are written to the outbox first and removed when their PUBACK
arrives, so neither a broker restart nor a killed supervisor loses one. An
outbox that cannot be written (disk full) keeps the answers in memory and
tries again every second; a publish the broker refuses (PUBACK reason code
0x80 or above) is reported, never taken for delivered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Protocol

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from appliance.errors import ApplianceError
from appliance.logs import get_logger
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


class Publisher:
    """Publishes on ``client`` while ``connected`` is set, and follows what needs a PUBACK.

    A refused publish becomes an ``error`` message on ``error_topic``;
    ``on_change()`` runs whenever :attr:`error` (the outbox's trouble, or
    ``None``) changes. Runs on the loop, as every paho callback does.
    """

    def __init__(self, client: paho.Client, store: Outbox, loop: asyncio.AbstractEventLoop,
                 connected: asyncio.Event, error_topic: str,
                 on_change: Callable[[], None]) -> None:
        self.client, self.store, self.loop = client, store, loop
        self.connected = connected
        self.error_topic = error_topic
        self.on_change = on_change
        self.error: str | None = None
        self._inflight: dict[int, tuple[int, Outgoing]] = {}  # paho mid -> outbox key, message
        self._forwarded: dict[int, tuple[Callable[[], None], Callable[[], None]]] = {}
        self._undelivered: list[tuple[str | None, list[Outgoing]]] = []
        self._delivered = asyncio.Event()

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
            self.track(key, message)

    def resend(self) -> None:
        """Publish the outbox of earlier runs (paho sends it once connected)."""
        for key, message in self.store.outbox():
            self.track(key, message)

    def track(self, key: int, message: Outgoing) -> None:
        """Publish and remember ``key``, so that its PUBACK retires it (-1: not journaled)."""
        info = self._send(message)
        if info is None:  # paho refused it outright: it would fail on every resend too
            if key >= 0:
                self._retire(key)
            return
        self._delivered.clear()
        self._inflight[info.mid] = (key, message)

    def published(self, mid: int, reason: ReasonCode | None) -> None:
        """The broker acknowledged (or refused) message ``mid``."""
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

    async def flush(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for every outstanding PUBACK."""
        try:
            await asyncio.wait_for(self._delivered.wait(), timeout_s)
        except TimeoutError:
            log.warning("flush_timeout", unacknowledged=len(self._inflight))

    def _retire(self, key: int) -> None:
        try:
            self.store.delivered(key)
        except ApplianceError as exc:  # it will be sent once more after a restart: harmless
            log.warning("outbox_retire_failed", error=str(exc))

    def _refused(self, message: Outgoing, reason: str, code: int) -> None:
        request_id = _request_id(message.payload)
        log.error("publish_refused", topic=message.topic, reason=reason, code=code,
                  request_id=request_id)
        if message.topic != self.error_topic:
            self.deliver(None, [error_message(
                self.error_topic, message.topic, f"the broker refused the message: {reason}"
                + (f" (reason code 0x{code:02X})" if code else ""), request_id)])

    def _outbox_failed(self, error: str) -> None:
        if self.error is None:
            log.error("outbox_unwritable", error=error,
                      hint="answers wait in memory and are retried every second")
            self.loop.call_later(RETRY_S, self._retry_undelivered)
        self.error = error
        self.on_change()

    def _retry_undelivered(self) -> None:
        waiting, self._undelivered = self._undelivered, []
        self.error = None
        for request_id, messages in waiting:
            self.deliver(request_id, messages)
        if self.error is None:
            log.info("outbox_writable", delivered=len(waiting))
            self.on_change()
        else:
            self.loop.call_later(RETRY_S, self._retry_undelivered)

    def _send(self, message: Outgoing) -> paho.MQTTMessageInfo | None:
        try:
            return self.client.publish(message.topic, message.payload, qos=message.qos,
                                       retain=message.retain, properties=properties_of(message))
        except (ValueError, TypeError) as exc:
            self._refused(message, str(exc), 0)
            return None


def _request_id(payload: bytes) -> str | None:
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    value = body.get("id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


class Addressed(Protocol):
    """What a message says beyond its topic and payload (an :class:`Outgoing`, a bench's)."""

    @property
    def correlation(self) -> bytes | None: ...
    @property
    def response_topic(self) -> str | None: ...
    @property
    def user_properties(self) -> tuple[tuple[str, str], ...]: ...


def properties_of(message: Addressed) -> Properties | None:
    """The MQTT v5 properties ``message`` carries (``None``: none)."""
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
