"""Actions and the world state at the appliance's edges.

The :class:`ActionDesk` builds the verifier and executor from the config, and
takes what reaches actions from outside the request pipeline: ``cmd/act`` (a
Home Assistant button, ``appliance act``), ``cmd/confirm`` and a spoken yes or
no to "Shall I ...?", and it publishes the world state on ``<base>/world``.

It also decides which entrances may act (:func:`closed_entrances`): the
device's own (voice, MQTT, rules, buttons) and the console's Talk page (behind
its login) always; Wyoming, which has no authentication, only with
``api.wyoming.actions: true``; HTTP with ``api.http.actions: true``, or by
default (``auto``) only behind a token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from appliance.actions.executor import Executor, SetOutput
from appliance.actions.registry import Registry
from appliance.actions.service import ActionService, DuplicateProposal
from appliance.actions.verifier import Verifier
from appliance.actions.world import WorldState
from appliance.config import Settings
from appliance.llm import new_request_id
from appliance.mqtt.bridge import Bridge
from appliance.mqtt.contract import InputError, Topics, parse_act, parse_confirm
from appliance.mqtt.inbound import Inbound
from appliance.protocol.messages import Outgoing


class ActionDesk:
    """The actions of one appliance (``service`` is ``None`` when none are configured)."""

    def __init__(self, settings: Settings, topics: Topics, bridge: Bridge, world: WorldState,
                 set_output: SetOutput | None) -> None:
        self.settings, self.topics, self.bridge, self.world = settings, topics, bridge, world
        self.service: ActionService | None = None
        if settings.actions:
            voice = settings.voice
            verifier = Verifier(Registry(settings.actions), world, kid_safe=voice.kid_safe,
                                kid_safe_actions=voice.kid_safe_actions,
                                closed=closed_entrances(settings))
            self.service = ActionService(verifier, Executor(bridge.deliver, set_output),
                                         self._publish_record, settings.actions_confirm_s)

    @property
    def topics_handled(self) -> list[str]:
        """The command topics :meth:`on_command` takes."""
        return command_topics(self.topics)

    def _publish_record(self, record: dict[str, Any]) -> None:
        self.bridge.deliver(None, [Outgoing(self.topics.action, json.dumps(
            record, ensure_ascii=False).encode())])

    def on_command(self, inbound: Inbound) -> None:
        """``cmd/confirm`` (yes or no to "Shall I ...?") and ``cmd/act`` (a button)."""
        service = self.service
        max_bytes = self.settings.mqtt.max_payload_bytes
        if inbound.topic == self.topics.confirm:
            request_id, yes = parse_confirm(inbound.payload, max_bytes)
            if service is None or service.confirm(request_id, yes, "mqtt") is None:
                raise InputError(f"no action waits for a confirmation with id {request_id!r}",
                                 request_id)
            return
        request_id, name, args = parse_act(inbound.payload, max_bytes)
        if service is None:
            raise InputError("no actions are configured on this device", request_id)
        try:
            service.propose(request_id or new_request_id(), name, args, "mqtt")
        except DuplicateProposal as exc:
            raise InputError(str(exc), request_id) from None

    def close(self) -> None:
        """The appliance stops: the questions still waiting are declined, and recorded."""
        if self.service is not None:
            self.service.close()

    def spoken(self, intent: str, say: Callable[[str], None]) -> None:
        """A spoken yes or no answers the latest spoken "Shall I ...?"; its outcome is said."""
        service = self.service
        waiting = service.latest_waiting("voice") if service is not None else None
        if service is None or waiting is None or intent not in ("yes", "no"):
            return
        outcome = service.confirm(waiting, intent == "yes", "voice")
        if outcome is not None:
            say(outcome.text)

    async def publish_world(self) -> None:
        """The readings, retained on ``<base>/world``, when they changed, at most so often."""
        every = max(self.settings.world.publish_interval_s, 0.05)
        while True:
            await asyncio.sleep(every)
            if self.world.changed:
                self.bridge.publish(Outgoing(self.topics.world, json.dumps(
                    self.world.flush(), ensure_ascii=False).encode(), retain=True))


def command_topics(topics: Topics) -> list[str]:
    """The command topics of an action desk under ``topics`` (``cmd/confirm``, ``cmd/act``)."""
    return [topics.confirm, topics.act]


def closed_entrances(settings: Settings) -> dict[str, str]:
    """The API entrances that may not act, each with why (naming the setting to change)."""
    closed: dict[str, str] = {}
    wyoming, http = settings.api.wyoming, settings.api.http
    if wyoming is None or not wyoming.actions:
        closed["wyoming"] = ("actions are off for Wyoming, which has no authentication "
                             "(api.wyoming.actions: false)")
    if http is None or (http.actions == "auto" and http.token_file is None):
        closed["http"] = ("actions are off for HTTP without a token "
                          "(api.http.actions: auto, and no api.http.token_file)")
    elif not http.actions:  # "auto" (with a token) is true
        closed["http"] = "actions are off for HTTP (api.http.actions: false)"
    return closed
