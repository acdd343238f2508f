"""Inbound MQTT messages: validate, route to the dispatcher, answer errors, then acknowledge.

Every message ends in exactly one of three ways: handed to the dispatcher
(journaled), refused with one ``error`` message, or held because the journal
cannot be written just now. Only the first two acknowledge it to the broker;
a held message is tried again every few seconds until the journal takes it,
and the broker redelivers it if the process dies meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from appliance.actions.world import WorldState
from appliance.config import Settings
from appliance.llm import new_request_id
from appliance.logs import get_logger
from appliance.mqtt.contract import InputError, Topics, parse_ask, parse_cancel, parse_event
from appliance.mqtt.inbound import Inbound
from appliance.mqtt.topic_policy import TopicPolicy
from appliance.protocol.messages import Outgoing, Request, error_message
from appliance.rules import RuleSet, parse_condition
from appliance.service.conversations import Conversations
from appliance.service.dispatcher import Dispatcher
from appliance.service.guard import INTERNAL_ERROR, guarded
from appliance.service.inbox import CancelRunning, Connected, Inbox, Item, Prefill, Reading, Spoken
from appliance.service.journal import JournalError
from appliance.service.outlets import Outlet
from appliance.service.ratelimit import RateLimiter
from appliance.service.scheduler import Rejected
from appliance.service.status import Status

log = get_logger("intake")

RETRY_S = 2.0
MAX_HOPS = 3
"""How often a fleet ask is handed on by busy devices before one takes it anyway."""
HOPS = "hops"

Route = tuple[Callable[[str], bool], Callable[[Inbound], None]]
Forward = Callable[[Outgoing, Callable[[], None], Callable[[], None]], None]


class _Held(Exception):
    """The message could not be journaled; keep it and try again."""


class Intake:
    """Turns each inbound message into a dispatcher call or an ``error`` message.

    ``ack`` is called for every message once it is journaled or refused, so
    the broker redelivers whatever a crash interrupted before that point.
    ``routes`` send other topics to their owners (the remote generator, the
    action desk); ``forward`` (the bridge's) hands a fleet ask on;
    ``on_connected`` runs when :meth:`run` takes a :class:`Connected`.
    """

    def __init__(self, settings: Settings, topics: Topics, rules: RuleSet,
                 dispatcher: Dispatcher, outlet: Outlet, ack: Callable[[Inbound], None],
                 on_discovery_request: Callable[[], None], status: Status | None = None,
                 *, inbox: Inbox | None = None, world: WorldState | None = None,
                 routes: tuple[Route, ...] = (), forward: Forward | None = None,
                 on_connected: Callable[[], None] = lambda: None) -> None:
        self.settings, self.topics, self.rules = settings, topics, rules
        self.dispatcher, self.outlet, self.ack = dispatcher, outlet, ack
        self.on_discovery_request = on_discovery_request
        self.status = status or Status()
        mqtt = settings.mqtt
        self.limiter = RateLimiter(mqtt.ask_rate_per_min)
        self.policy = TopicPolicy.for_settings(topics.base, mqtt.base_topic,
                                               mqtt.discovery.prefix, mqtt.response_topics)
        self.discovery_status = f"{mqtt.discovery.prefix}/status"
        self.event_prefix = f"{topics.base}/event/"
        self.inbox, self.world, self.on_connected = inbox, world, on_connected
        self.world_topics = {topic: name for name, topic in settings.world.topics.items()}
        self.known_names = known_names(settings)
        self._held: dict[Inbound, str] = {}  # message -> the request id it was given
        self._retry_due = False
        self._routes = routes
        fleet = settings.fleet
        self.fleet_ask = f"{fleet.topic}/ask" if fleet else None
        self.forward = forward

    async def run(self) -> None:
        """Take what the entrances put into the inbox, one item at a time, for ever."""
        assert self.inbox is not None
        while True:
            self.take(await self.inbox.get())

    def take(self, item: Item) -> None:
        """Handle one item of the inbox (on the loop)."""
        if isinstance(item, Inbound):
            self._handle(item)
        else:
            self._take_local(item)

    @guarded(lambda _self, _item: None)
    def _take_local(self, item: Item) -> None:
        if isinstance(item, Reading):
            self.sensor(item.name, item.event)
        elif isinstance(item, Spoken):
            try:
                self.dispatcher.submit(item.request)
            except (Rejected, JournalError) as exc:
                log.warning("voice_request_dropped", reason=str(exc))
        elif isinstance(item, CancelRunning):
            self.dispatcher.barge_in()
        elif isinstance(item, Prefill):
            self.dispatcher.prefill(item.text)
        elif isinstance(item, Connected):
            self.on_connected()

    def _failed(self, inbound: Inbound) -> None:
        """The guard's answer to a bug: one ``internal error``, and the message is done."""
        self._error(inbound.topic, INTERNAL_ERROR, self._held.pop(inbound, None)
                    or _readable_id(inbound.payload))
        self.ack(inbound)

    def __call__(self, inbound: Inbound) -> None:
        """Handle one message (on the loop)."""
        self._handle(inbound)

    @guarded(_failed)
    def _handle(self, inbound: Inbound) -> None:
        request_id: str | None = None
        try:
            if inbound.topic == self.topics.ask:
                self._ask(inbound)
            elif inbound.topic == self.fleet_ask:
                if self._hand_on(inbound):
                    return  # acknowledged once another device has it
                self._ask(inbound, fleet=True)
            elif route := next((h for match, h in self._routes if match(inbound.topic)), None):
                route(inbound)
            elif inbound.topic == self.topics.cancel:
                request_id = parse_cancel(inbound.payload, self.settings.mqtt.max_payload_bytes)
                if not self.dispatcher.cancel(request_id):
                    raise InputError(f"no queued or running request with id {request_id!r}",
                                     request_id)
            elif inbound.topic == self.discovery_status:
                if inbound.payload == b"online":
                    self.on_discovery_request()
            else:
                self._event(inbound)
        except InputError as exc:
            self._error(inbound.topic, str(exc), exc.request_id or request_id)
        except Rejected as exc:
            self._error(inbound.topic, str(exc), request_id)
        except _Held:
            return  # not acknowledged: it is tried again, or redelivered after a restart
        self._held.pop(inbound, None)
        self.ack(inbound)
        if not self._held:
            self.status.problem("journal", None)

    def _hold(self, inbound: Inbound, request_id: str | None, exc: JournalError) -> _Held:
        first = inbound not in self._held
        self._held[inbound] = request_id or ""
        self.status.problem("journal", str(exc))
        if first:
            log.error("not_journaled", topic=inbound.topic, id=request_id, error=str(exc))
            self._error(inbound.topic, f"cannot store this message now ({exc}); it is kept "
                        "and handled as soon as the journal can be written", request_id)
        if not self._retry_due:
            self._retry_due = True
            asyncio.get_running_loop().call_later(RETRY_S, self._retry)
        return _Held()

    def _retry(self) -> None:
        self._retry_due = False
        for inbound in list(self._held):
            self._handle(inbound)

    def _hand_on(self, inbound: Inbound) -> bool:
        """A busy device hands a site ask back to the group (at most :data:`MAX_HOPS` times)."""
        fleet = self.settings.fleet
        busy = self.dispatcher.busy
        if fleet is None or self.forward is None or busy < fleet.take_below \
                or inbound.hops >= MAX_HOPS:
            return False
        log.info("fleet_handed_on", busy=busy, hops=inbound.hops + 1)
        self.forward(Outgoing(inbound.topic, inbound.payload, correlation=inbound.correlation,
                              response_topic=inbound.response_topic,
                              user_properties=((HOPS, str(inbound.hops + 1)),)),
                     lambda: self.ack(inbound), lambda: self._handle_taken(inbound))
        return True

    def _handle_taken(self, inbound: Inbound) -> None:
        """Handing on failed: this device answers it after all."""
        self._handle(replace(inbound, hops=MAX_HOPS))

    def _ask(self, inbound: Inbound, *, fleet: bool = False) -> None:
        mqtt = self.settings.mqtt
        ask = parse_ask(inbound.payload, mqtt.max_payload_bytes, self.settings.llm.max_tokens)
        request_id = ask.id or self._held.get(inbound) or new_request_id()
        if inbound.response_topic is not None:
            refused = self.policy.refuse_reply(inbound.response_topic)
            if refused is not None:
                raise InputError(f"response topic {inbound.response_topic[:80]!r} refused: "
                                 f"{refused}", request_id)
        client = inbound.client or "anonymous"
        if inbound not in self._held and not self.limiter.allow(client):
            raise InputError(f"rate limited: at most {mqtt.ask_rate_per_min} questions per "
                             f"minute for client {client!r}", request_id)
        reply = inbound.response_topic
        if fleet and reply is None and self.settings.fleet is not None:
            reply = f"{self.settings.fleet.topic}/answer"
        request = Request(id=request_id, source="mqtt", text=ask.text,
                          max_tokens=ask.max_tokens, reply_topic=reply,
                          correlation=inbound.correlation, client=client,
                          tier=ask.tier,  # type: ignore[arg-type]
                          conversation=Conversations.resolve(ask.conversation))
        try:
            if not self.dispatcher.submit(request):
                log.info("duplicate_ignored", id=request.id)
        except Rejected as exc:
            raise InputError(str(exc), request.id) from None
        except JournalError as exc:
            raise self._hold(inbound, request_id, exc) from None

    def _event(self, inbound: Inbound) -> None:
        topic = inbound.topic
        name = self.world_topics.get(topic) or (
            topic.removeprefix(self.event_prefix) if topic.startswith(self.event_prefix)
            else None)
        if not self.rules.knows(topic) and name not in self.known_names:
            raise InputError(f"unknown event {name or topic!r}: no rule, action or "
                             "world.topics entry knows it")
        event = parse_event(inbound.payload, self.settings.mqtt.max_payload_bytes)
        if name is not None and self.world is not None:
            self.world.update(name, event)
        try:
            self.dispatcher.on_event(topic, event)
        except JournalError as exc:
            raise self._hold(inbound, None, exc) from None

    def sensor(self, name: str, event: dict[str, Any]) -> None:
        """A reading of this device's own (a GPIO input), on the loop.

        It reaches the rules at once, broker or not, exactly as a parsed
        ``<base>/event/<name>`` message would; other devices get it through the
        outbox once the broker can be reached. The bridge subscribes to our
        event topics with *no local*, so our own copy never comes back here.
        """
        topic = self.topics.event(name)
        self.outlet.deliver(None, [Outgoing(topic, json.dumps(event).encode())])
        if self.world is not None:
            self.world.update(name, event)
        try:
            self.dispatcher.on_event(topic, event)
        except JournalError as exc:
            log.error("event_not_journaled", name=name, error=str(exc))
            self.status.problem("journal", str(exc))

    def _error(self, topic: str, message: str, request_id: str | None) -> None:
        log.info("rejected", topic=topic, error=message)
        self.outlet.deliver(None, [error_message(self.topics.error, topic, message, request_id)])


def listen_topics(settings: Settings, topics: Topics, rules: RuleSet,
                  extra: tuple[str, ...] = ()) -> list[str]:
    """Every topic the intake takes (``extra``: those of its routes)."""
    events = f"{topics.base}/event/"
    world = [topic for topic in settings.world.topics.values() if topic not in rules.topics]
    listened = [topics.ask, topics.events, topics.cancel,
                *(t for t in rules.topics if not t.startswith(events)), *world, *extra]
    mqtt = settings.mqtt
    if mqtt.discovery.enabled:
        listened.append(f"{mqtt.discovery.prefix}/status")
    if settings.fleet is not None:
        listened.append(f"$share/{settings.fleet.group}/{settings.fleet.topic}/ask")
    return listened


def _readable_id(payload: bytes) -> str | None:
    """The ``id`` of a JSON payload, if one can be read at all (for an internal error)."""
    try:
        value = json.loads(payload).get("id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) and len(value) <= 64 else None


def known_names(settings: Settings) -> frozenset[str]:
    """The sensor names something uses: a rule, a GPIO input, ``world.topics``, a condition."""
    names = {spec.name for spec in settings.gpio.inputs} | set(settings.world.topics)
    for rule in settings.rules:
        if "/" not in rule.source:
            names.add(rule.source)
        if rule.when:
            names |= parse_condition(rule.when).names()
    for action in settings.actions:
        for requirement in action.require:
            names |= parse_condition(requirement.when).names()
    return frozenset(names)
