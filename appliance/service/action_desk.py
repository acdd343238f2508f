"""Actions and the world state at the appliance's edges.

The :class:`ActionDesk` builds the verifier and executor from the config, and
takes what reaches actions from outside the request pipeline: ``cmd/act`` (a
Home Assistant button, ``appliance act``), ``cmd/confirm`` and a spoken yes or
no to "Shall I ...?", and it publishes the world state on ``<base>/world``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from appliance.actions.executor import Executor, SetOutput
from appliance.actions.registry import Registry
from appliance.actions.service import ActionService
from appliance.actions.verifier import Verifier
from appliance.actions.world import WorldState
from appliance.config import Settings
from appliance.llm import new_request_id
from appliance.mqtt.bridge import Bridge, Inbound
from appliance.mqtt.contract import InputError, Topics, parse_act, parse_confirm
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
                                kid_safe_actions=voice.kid_safe_actions)
            self.service = ActionService(verifier, Executor(bridge.deliver, set_output),
                                         self._publish_record, settings.actions_confirm_s)

    @property
    def topics_handled(self) -> list[str]:
        """The command topics :meth:`on_command` takes."""
        return [self.topics.confirm, self.topics.act]

    def _publish_record(self, record: dict[str, Any]) -> None:
        self.bridge.deliver(None, [Outgoing(self.topics.action, json.dumps(
            record, ensure_ascii=False).encode())])

    def on_command(self, inbound: Inbound) -> None:
        """``cmd/confirm`` (yes or no to "Shall I ...?") and ``cmd/act`` (a button)."""
        service = self.service
        max_bytes = self.settings.mqtt.max_payload_bytes
        if inbound.topic == self.topics.confirm:
            request_id, yes = parse_confirm(inbound.payload, max_bytes)
            if service is None or service.confirm(request_id, yes) is None:
                raise InputError(f"no action waits for a confirmation with id {request_id!r}",
                                 request_id)
            return
        request_id, name, args = parse_act(inbound.payload, max_bytes)
        if service is None:
            raise InputError("no actions are configured on this device", request_id)
        service.propose(request_id or new_request_id(), name, args, "mqtt")

    def spoken(self, intent: str, say: Callable[[str], None]) -> None:
        """A spoken yes or no answers the latest "Shall I ...?"; its outcome is said."""
        service = self.service
        waiting = service.latest_waiting() if service is not None else None
        if service is None or waiting is None or intent not in ("yes", "no"):
            return
        outcome = service.confirm(waiting, intent == "yes")
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
