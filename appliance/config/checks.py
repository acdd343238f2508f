"""Checks of the config that span several keys, run once every value has its type."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable
from typing import Any

from appliance.config.addresses import check_uri, parse_listen
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
    mirror = settings.models.mirror
    if mirror is not None and not mirror.startswith(("http://", "https://")):
        raise fail("models.mirror", "expected the http:// or https:// URL of a mirror made by "
                   f"`appliance catalog`, got {mirror!r}")
    if settings.gpio.fan_off_c >= settings.gpio.fan_on_c:
        raise fail("gpio.fan_off_c", f"must be below gpio.fan_on_c ({settings.gpio.fan_on_c})")
    _unique(settings.thermal.levels, "thermal.levels", fail)
    _unique(settings.rules, "rules", fail)
    _unique(settings.gpio.inputs, "gpio.inputs", fail)
    _check_topics(settings, fail)
    _check_escalation(settings, fail)
    _check_actions(settings, fail)
    _check_adapters(settings, fail)
    api = settings.api
    try:
        http = parse_listen(api.http.listen) if api.http is not None else None
    except ValueError as exc:
        raise fail("api.http.listen", str(exc)) from None
    try:
        web = parse_listen(api.web.listen) if api.web is not None else None
    except ValueError as exc:
        raise fail("api.web.listen", str(exc)) from None
    if web is not None and http is not None and web[1] != 0 and web[1] == http[1]:
        raise fail("api.web.listen", f"port {web[1]} is api.http's: the console needs a "
                   "port of its own (8080 by default)")
    try:
        if api.wyoming is not None:
            check_uri(api.wyoming.listen)
    except ValueError as exc:
        raise fail("api.wyoming.listen", str(exc)) from None
    for i, entry in enumerate(api.wyoming.allowed_clients if api.wyoming else ()):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise fail(f"api.wyoming.allowed_clients[{i}]",
                       f"not an address or a network (CIDR): {exc}") from None


def _check_actions(settings: Settings, fail: Fail) -> None:
    """The allow list: each action does one thing, and everything it names exists."""
    # Imported here: appliance.actions imports the config package, which imports us.
    from appliance.actions.registry import SchemaError, check_schema
    from appliance.voice.activation import normalize

    _unique(settings.actions, "actions", fail)
    _unique(settings.gpio.outputs, "gpio.outputs", fail)
    names = {action.name for action in settings.actions}
    outputs = {output.name for output in settings.gpio.outputs}
    mqtt = settings.mqtt
    policy = TopicPolicy.for_settings(settings.base_topic, mqtt.base_topic,
                                      mqtt.discovery.prefix, ())
    phrases: dict[str, str] = {}
    for i, action in enumerate(settings.actions):
        key = f"actions[{i}]"
        if (action.publish is None) == (action.gpio is None):
            raise fail(key, "give exactly one of publish: {topic, payload} and "
                            "gpio: {output, value}")
        if action.publish is not None:
            problem = policy.refuse(action.publish.topic)
            if problem is not None:
                raise fail(f"{key}.publish.topic", f"{action.publish.topic!r} cannot be "
                                                   f"published to: {problem}")
            try:
                _templates(action.publish.payload)
            except ExpressionError as exc:
                raise fail(f"{key}.publish.payload", str(exc)) from None
        if action.gpio is not None and action.gpio.output not in outputs:
            raise fail(f"{key}.gpio.output", f"no gpio.outputs entry is called "
                                             f"{action.gpio.output!r}")
        try:
            check_schema(action.args)
        except SchemaError as exc:
            raise fail(f"{key}.args", str(exc)) from None
        for j, requirement in enumerate(action.require):
            try:
                condition = parse_condition(requirement.when)
            except ExpressionError as exc:
                raise fail(f"{key}.require[{j}].when", str(exc)) from None
            if not condition.names():
                raise fail(f"{key}.require[{j}].when", "the condition names no reading, "
                                                       "such as greenhouse.temperature")
        for phrase in action.phrases:
            said = normalize(phrase)
            if said in phrases:
                raise fail(f"{key}.phrases", f"{phrase!r} is already a phrase of "
                                             f"{phrases[said]!r}")
            phrases[said] = action.name
    for i, rule in enumerate(settings.rules):
        for name in rule.actions:
            if name not in names:
                raise fail(f"rules[{i}].actions", f"unknown action {name!r}")
    for name in settings.voice.kid_safe_actions:
        if name not in names:
            raise fail("voice.kid_safe_actions", f"unknown action {name!r}")


def _templates(payload: Any) -> None:
    """Every string in an action's payload parses as a template."""
    if isinstance(payload, dict):
        for value in payload.values():
            _templates(value)
    elif isinstance(payload, list):
        for value in payload:
            _templates(value)
    elif isinstance(payload, str):
        parse_template(payload)


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


ADAPTER_SOURCES = ("voice", "mqtt", "sensor", "api")
"""The sources ``llm.adapter_for`` may give an adapter (``protocol.messages.Source``)."""


def _check_adapters(settings: Settings, fail: Fail) -> None:
    """LoRA adapters: plain names, one file each, and every use names one that exists.

    Whether a file fits the model is checked at start-up (``appliance.preflight``).
    """
    llm = settings.llm
    for name, adapter in llm.adapters.items():
        if not name or any(c in name for c in ":/ ") or name == "latest":
            raise fail(f"llm.adapters.{name}", "an adapter's name is a plain word (no ':', "
                       "'/' or space, not 'latest'): clients ask for <model>:<adapter>")
        if (adapter.path is None) == (adapter.model is None):
            raise fail(f"llm.adapters.{name}", "give exactly one of path: (a .gguf file) "
                       "and model: (a catalog name)")
    known = ", ".join(llm.adapters) or "none is configured"
    for source, name in llm.adapter_for.items():
        if source not in ADAPTER_SOURCES:
            raise fail(f"llm.adapter_for.{source}", f"unknown source; expected one of "
                       f"{', '.join(ADAPTER_SOURCES)}")
        if name not in llm.adapters:
            raise fail(f"llm.adapter_for.{source}", f"no adapter {name!r} in llm.adapters "
                       f"({known})")
    for i, rule in enumerate(settings.rules):
        if rule.adapter is not None and rule.adapter not in llm.adapters:
            raise fail(f"rules[{i}].adapter", f"no adapter {rule.adapter!r} in llm.adapters "
                       f"({known})")


def _unique(items: tuple[Any, ...], key: str, fail: Fail) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.name in seen:
            raise fail(f"{key}[{i}].name", f"duplicate name {item.name!r}")
        seen.add(item.name)
