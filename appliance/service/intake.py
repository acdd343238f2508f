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

from appliance.actions.world import WorldState
from appliance.config import Settings
from appliance.llm import new_request_id
from appliance.logs import get_logger
from appliance.mqtt.bridge import Inbound
from appliance.mqtt.contract import InputError, Topics, parse_ask, parse_cancel, parse_event
from appliance.mqtt.topic_policy import TopicPolicy
from appliance.protocol.messages import Outgoing, Request
from appliance.rules import RuleSet, parse_condition
from appliance.service.dispatcher import Dispatcher, Rejected
from appliance.service.guard import INTERNAL_ERROR, guarded
from appliance.service.journal import JournalError
from appliance.service.outlets import Outlet
from appliance.service.ratelimit import RateLimiter
from appliance.service.status import Status

log = get_logger("intake")

RETRY_S = 2.0
MAX_HOPS = 3
"""How often a fleet ask is handed on by busy devices before one takes it anyway."""
HOPS = "hops"

Route = tuple[Callable[[str], bool], Callable[[Inbound], None]]


class _Held(Exception):
    """The message could not be journaled; keep it and try again."""


class Intake:
    """Turns each inbound message into a dispatcher call or an ``error`` message.

    ``ack`` is called for every message once it is journaled or refused, so
    the broker redelivers whatever a crash interrupted before that point.
    """

    def __init__(self, settings: Settings, topics: Topics, rules: RuleSet,
                 dispatcher: Dispatcher, outlet: Outlet, ack: Callable[[Inbound], None],
                 on_discovery_request: Callable[[], None], status: Status | None = None,
                 ) -> None:
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
        self.world: WorldState | None = None  # set by the owner: events update it
        self.world_topics = {topic: name for name, topic in settings.world.topics.items()}
        self.known_names = known_names(settings)
        self._held: dict[Inbound, str] = {}  # message -> the request id it was given
        self._retry_due = False
        self._routes: list[Route] = []
        self._extra_topics: list[str] = []
        fleet = settings.fleet
        self.fleet_ask = f"{fleet.topic}/ask" if fleet else None
        self.forward: Callable[[Outgoing, Callable[[], None], Callable[[], None]], None] | None \
            = None  # the bridge's, to hand a fleet ask on

    def route(self, topics: list[str], handles: Callable[[str], bool],
              handler: Callable[[Inbound], None]) -> None:
        """Send messages on ``topics`` (for which ``handles`` is true) to ``handler``."""
        self._extra_topics += topics
        self._routes.append((handles, handler))

    def subscriptions(self) -> list[str]:
        """Every topic we listen to."""
        topics = [self.topics.ask, self.topics.events, self.topics.cancel,
                  *(t for t in self.rules.topics if not t.startswith(self.event_prefix)),
                  *(t for t in self.world_topics if t not in self.rules.topics),
                  *self._extra_topics]
        if self.settings.mqtt.discovery.enabled:
            topics.append(self.discovery_status)
        fleet = self.settings.fleet
        if fleet is not None:
            topics.append(f"$share/{fleet.group}/{fleet.topic}/ask")
        return topics

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
        busy = len(self.dispatcher.queue) + (self.dispatcher.running is not None)
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
                          tier=ask.tier)  # type: ignore[arg-type]
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

    def _error(self, topic: str, message: str, request_id: str | None) -> None:
        payload = {"topic": topic, "error": message}
        if request_id is not None:
            payload = {"id": request_id, **payload}
        log.info("rejected", topic=topic, error=message)
        self.outlet.deliver(None, [Outgoing(self.topics.error, json.dumps(payload).encode())])


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
