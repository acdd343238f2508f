"""Sensor rules: which events on which topics turn into prompts for the model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from appliance.config.schema import Rule
from appliance.rules.expr import Condition, parse_condition
from appliance.rules.template import PromptTemplate, parse_template


@dataclass(frozen=True)
class Trigger:
    """A rule that an event met, with the prompt made from that event."""

    rule: str
    prompt: str
    publish: str | None
    min_interval_s: float


@dataclass(frozen=True)
class _Compiled:
    rule: Rule
    condition: Condition | None
    template: PromptTemplate


def event_topic(base_topic: str, source: str) -> str:
    """The MQTT topic of a rule source: a full topic as is, a bare name under ``<base>/event/``."""
    return source if "/" in source else f"{base_topic}/event/{source}"


class RuleSet:
    """All rules, indexed by the topic they listen to.

    Keeps each rule's previous event (for ``changed()`` and ``delta()``) and
    the time it last fired (for ``min_interval_s``).
    """

    def __init__(self, rules: tuple[Rule, ...], base_topic: str) -> None:
        self._by_topic: dict[str, list[_Compiled]] = {}
        for rule in rules:
            compiled = _Compiled(rule, parse_condition(rule.when) if rule.when else None,
                                 parse_template(rule.prompt))
            self._by_topic.setdefault(event_topic(base_topic, rule.source), []).append(compiled)
        self._previous: dict[str, Mapping[str, Any]] = {}
        self._fired_at: dict[str, float] = {}
        self._with_knowledge = {rule.name for rule in rules if rule.knowledge}
        self._adapters = {rule.name: rule.adapter for rule in rules if rule.adapter}
        self._actions = {rule.name: rule.actions for rule in rules if rule.actions}

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic some rule listens to."""
        return tuple(self._by_topic)

    def actions_of(self, rule: str | None) -> tuple[str, ...]:
        """The actions rule ``rule`` lets the model choose among."""
        return self._actions.get(rule or "", ())

    def adapter_of(self, rule: str | None) -> str | None:
        """The LoRA adapter rule ``rule`` answers with (``None``: its source's, or none)."""
        return self._adapters.get(rule or "")

    def uses_knowledge(self, rule: str | None) -> bool:
        """Whether rule ``rule`` asks for what the manuals say (``knowledge: true``)."""
        return rule in self._with_knowledge

    def knows(self, topic: str) -> bool:
        """Whether any rule listens to ``topic``."""
        return topic in self._by_topic

    def match(self, topic: str, event: Mapping[str, Any],
              world: Mapping[str, Any] | None = None) -> list[Trigger]:
        """The rules that ``event`` on ``topic`` meets (debounce is :meth:`due`'s job).

        ``world`` (the latest readings by name) lets conditions and prompts read
        other sensors as ``greenhouse.temperature``; the event's own fields win.
        """
        triggers = []
        for c in self._by_topic.get(topic, ()):
            previous = self._previous.get(c.rule.name)
            self._previous[c.rule.name] = event
            seen = {**world, **event} if world else event
            if c.condition is None or c.condition(seen, previous):
                triggers.append(Trigger(c.rule.name, c.template.render(seen), c.rule.publish,
                                        c.rule.min_interval_s))
        return triggers

    def due(self, trigger: Trigger, now: float) -> bool:
        """Whether the rule may fire at ``now``; if so, it is recorded as fired."""
        last = self._fired_at.get(trigger.rule)
        if last is not None and now - last < trigger.min_interval_s:
            return False
        self._fired_at[trigger.rule] = now
        return True
