"""Rule handling: a sensor event becomes the generations its rules ask for.

Each matching rule (``rules:`` in the config) makes one request, unless its
cooldown says not yet. While a rule's request still waits in the queue, a
newer event replaces its prompt instead of queueing another one: the latest
reading wins, and a burst of events costs one generation.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from appliance.actions.world import WorldState
from appliance.llm import new_request_id
from appliance.logs import get_logger
from appliance.protocol.messages import Request
from appliance.rules import RuleSet
from appliance.service.scheduler import Rejected, Scheduler

log = get_logger("dispatcher")


class RuleHandling:
    """Applies ``rules`` to sensor events and submits their requests to ``scheduler``.

    ``world`` (when actions are configured) holds the latest readings that a
    rule's condition may name besides the event's own.
    """

    def __init__(self, rules: RuleSet, scheduler: Scheduler,
                 world: WorldState | None = None) -> None:
        self.rules, self.scheduler, self.world = rules, scheduler, world

    def on_event(self, topic: str, event: dict[str, Any], now: float | None = None) -> int:
        """Apply the rules to ``event``; returns how many generations it queued."""
        queued = 0
        now = time.monotonic() if now is None else now
        world = self.world.fresh() if self.world is not None else None
        scheduler = self.scheduler
        for trigger in self.rules.match(topic, event, world):
            waiting = scheduler.queue.queued_for_rule(trigger.rule)
            if waiting is not None:  # coalesce: the latest event wins
                scheduler.journal.update_text(waiting.id, trigger.prompt)
                scheduler.queue.replace(replace(waiting, text=trigger.prompt))
                continue
            if not self.rules.due(trigger, now):
                continue
            request = Request(id=new_request_id(), source="sensor", text=trigger.prompt,
                              reply_topic=trigger.publish, rule=trigger.rule)
            try:
                scheduler.submit(request)
                queued += 1
            except Rejected as exc:
                log.warning("rule_dropped", rule=trigger.rule, reason=str(exc))
        return queued
