"""Checks of the config that span several keys, run once every value has its type."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from appliance.config.schema import INTENT_ACTIONS, STATE_LED_NAMES, Settings
from appliance.errors import ConfigError
from appliance.mqtt.topic_policy import TopicPolicy
from appliance.rules.expr import ExpressionError, parse_condition
from appliance.rules.template import parse_template

Fail = Callable[[str, str], ConfigError]


def check_settings(settings: Settings, fail: Fail) -> None:
    """Raise ``fail(key, problem)`` for the first thing that is wrong."""
    if settings.llm.model is None and settings.llm.model_path is None:
        raise fail("llm", "set llm.model (a catalog name) or llm.model_path (a .gguf file)")
    if any(c in settings.base_topic for c in "#+"):
        raise fail("mqtt.base_topic", "must not contain the MQTT wildcards '#' or '+'")
    if "/" in settings.device_id or any(c in settings.device_id for c in "#+"):
        raise fail("device_id", "must not contain '/', '#' or '+'")
    levels = settings.thermal.levels
    for i, (low, high) in enumerate(itertools.pairwise(levels), start=1):
        if high.from_c <= low.from_c:
            raise fail(f"thermal.levels[{i}].from_c",
                       f"levels must rise: {high.from_c} is not above {low.from_c}")
    for i, rule in enumerate(settings.rules):
        try:
            if rule.when is not None:
                parse_condition(rule.when)
        except ExpressionError as exc:
            raise fail(f"rules[{i}].when", str(exc)) from None
        try:
            parse_template(rule.prompt)
        except ExpressionError as exc:
            raise fail(f"rules[{i}].prompt", str(exc)) from None
    for phrase, action in settings.voice.intents.items():
        if action not in INTENT_ACTIONS:
            raise fail(f"voice.intents.{phrase}",
                       f"unknown action {action!r}; expected one of {', '.join(INTENT_ACTIONS)}")
    for name in settings.gpio.state_leds:
        if name not in STATE_LED_NAMES:
            raise fail(f"gpio.state_leds.{name}",
                       f"unknown state; expected one of {', '.join(STATE_LED_NAMES)}")
    if settings.gpio.fan_off_c >= settings.gpio.fan_on_c:
        raise fail("gpio.fan_off_c", f"must be below gpio.fan_on_c ({settings.gpio.fan_on_c})")
    _unique(settings.thermal.levels, "thermal.levels", fail)
    _unique(settings.rules, "rules", fail)
    _unique(settings.gpio.inputs, "gpio.inputs", fail)
    _check_topics(settings, fail)
    _check_escalation(settings, fail)


def _check_escalation(settings: Settings, fail: Fail) -> None:
    escalation = settings.escalation
    if escalation.enabled:
        if (escalation.endpoint is None) == (escalation.mqtt_topic is None):
            raise fail("escalation", "set exactly one of escalation.endpoint (an "
                       "OpenAI-compatible server) and escalation.mqtt_topic (an appliance)")
        if escalation.endpoint is not None and not escalation.endpoint.startswith(
                ("http://", "https://")):
            raise fail("escalation.endpoint", f"expected an http:// or https:// URL such as "
                       f"http://bigbox.lan:8080/v1, got {escalation.endpoint!r}")
        topic = escalation.mqtt_topic
        if topic is not None and (not topic.endswith("/ask") or any(c in topic for c in "+#$")):
            raise fail("escalation.mqtt_topic", f"expected another appliance's ask topic "
                       f"such as site/big/ask, got {topic!r}")
    names = [level.name for level in settings.thermal.levels]
    wanted = escalation.route.level_at_least
    if wanted is not None and wanted not in names:
        raise fail("escalation.route.level_at_least",
                   f"unknown level {wanted!r}; expected one of {', '.join(names)}")


def _check_topics(settings: Settings, fail: Fail) -> None:
    """Every topic the config makes us publish to obeys the topic policy."""
    mqtt = settings.mqtt
    policy = TopicPolicy.for_settings(settings.base_topic, mqtt.base_topic,
                                      mqtt.discovery.prefix, ())
    topics = [(f"rules[{i}].publish", rule.publish) for i, rule in enumerate(settings.rules)]
    for key, topic in topics:
        if topic is not None and (problem := policy.refuse(topic)) is not None:
            raise fail(key, f"{topic!r} cannot be published to: {problem}")
    fleet = settings.fleet
    if fleet is not None:
        if not fleet.group or any(c in fleet.group for c in "/+#$"):
            raise fail("fleet.group", "expected a plain name (no '/', '+', '#', '$')")
        if (problem := policy.refuse(f"{fleet.topic}/answer")) is not None:
            raise fail("fleet.topic", f"{fleet.topic!r} cannot carry answers: {problem}")
    for i, topic_filter in enumerate(mqtt.response_topics):
        if not topic_filter or topic_filter.startswith("$"):
            raise fail(f"mqtt.response_topics[{i}]", "expected a topic filter such as replies/#")


def _unique(items: tuple[Any, ...], key: str, fail: Fail) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.name in seen:
            raise fail(f"{key}[{i}].name", f"duplicate name {item.name!r}")
        seen.add(item.name)
