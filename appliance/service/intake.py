"""Inbound MQTT messages: validate, route to the dispatcher, answer errors, then acknowledge."""

from __future__ import annotations

import json
from collections.abc import Callable

from appliance.config import Settings
from appliance.llm import new_request_id
from appliance.logs import get_logger
from appliance.mqtt.bridge import Inbound
from appliance.mqtt.contract import InputError, Topics, parse_ask, parse_cancel, parse_event
from appliance.rules import RuleSet
from appliance.service.dispatcher import Dispatcher, Outlet, Rejected
from appliance.service.ratelimit import RateLimiter
from appliance.service.requests import Outgoing, Request

log = get_logger("intake")


class Intake:
    """Turns each inbound message into a dispatcher call or an ``error`` message.

    ``ack`` is called for every message once it is journaled or refused, so
    the broker redelivers whatever a crash interrupted before that point.
    """

    def __init__(self, settings: Settings, topics: Topics, rules: RuleSet,
                 dispatcher: Dispatcher, outlet: Outlet, ack: Callable[[Inbound], None],
                 on_discovery_request: Callable[[], None]) -> None:
        self.settings, self.topics, self.rules = settings, topics, rules
        self.dispatcher, self.outlet, self.ack = dispatcher, outlet, ack
        self.on_discovery_request = on_discovery_request
        self.limiter = RateLimiter(settings.mqtt.ask_rate_per_min)
        self.discovery_status = f"{settings.mqtt.discovery.prefix}/status"
        self.event_prefix = f"{topics.base}/event/"
        # Our own GPIO inputs publish events; those no rule uses are not errors.
        self.local_events = {topics.event(spec.name) for spec in settings.gpio.inputs}

    def subscriptions(self) -> list[str]:
        """Every topic we listen to."""
        topics = [self.topics.ask, self.topics.events, self.topics.cancel,
                  *(t for t in self.rules.topics if not t.startswith(self.event_prefix))]
        if self.settings.mqtt.discovery.enabled:
            topics.append(self.discovery_status)
        return topics

    def __call__(self, inbound: Inbound) -> None:
        """Handle one message (on the loop)."""
        request_id: str | None = None
        try:
            if inbound.topic == self.topics.ask:
                self._ask(inbound)
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
        finally:
            self.ack(inbound)

    def _ask(self, inbound: Inbound) -> None:
        mqtt = self.settings.mqtt
        ask = parse_ask(inbound.payload, mqtt.max_payload_bytes, self.settings.llm.max_tokens)
        client = inbound.client or "anonymous"
        if not self.limiter.allow(client):
            raise InputError(f"rate limited: at most {mqtt.ask_rate_per_min} questions per "
                             f"minute for client {client!r}", ask.id)
        request = Request(id=ask.id or new_request_id(), source="mqtt", text=ask.text,
                          max_tokens=ask.max_tokens, reply_topic=inbound.response_topic,
                          correlation=inbound.correlation, client=client)
        try:
            if not self.dispatcher.submit(request):
                log.info("duplicate_ignored", id=request.id)
        except Rejected as exc:
            raise InputError(str(exc), request.id) from None

    def _event(self, inbound: Inbound) -> None:
        if not self.rules.knows(inbound.topic):
            if inbound.topic in self.local_events:
                return
            name = inbound.topic.removeprefix(self.event_prefix)
            raise InputError(f"unknown event {name!r}: no rule listens to it")
        event = parse_event(inbound.payload, self.settings.mqtt.max_payload_bytes)
        self.dispatcher.on_event(inbound.topic, event)

    def _error(self, topic: str, message: str, request_id: str | None) -> None:
        payload = {"topic": topic, "error": message}
        if request_id is not None:
            payload = {"id": request_id, **payload}
        log.info("rejected", topic=topic, error=message)
        self.outlet.deliver(None, [Outgoing(self.topics.error, json.dumps(payload).encode())])
