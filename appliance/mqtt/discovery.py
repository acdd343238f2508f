"""Home Assistant MQTT discovery: one device-based config message.

Published retained on ``<prefix>/device/<device_id>/config`` at every
connection and whenever Home Assistant announces ``online`` on
``<prefix>/status``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import appliance
from appliance.config.schema import Action
from appliance.mqtt.contract import Topics
from appliance.protocol.messages import Outgoing


def discovery_topic(prefix: str, device_id: str) -> str:
    """Where the device's discovery config goes."""
    return f"{prefix}/device/{device_id}/config"


def discovery_message(prefix: str, device_id: str, topics: Topics,
                      actions: Iterable[Action] = ()) -> Outgoing:
    """The retained discovery config: state, temperature, throttle, queue, last answer, ask.

    Each action is a button; pressing it proposes the action, which the verifier
    checks as it checks every other proposal.
    """
    uid = device_id.replace("-", "_")

    def state_sensor(key: str, name: str, **extra: object) -> dict[str, object]:
        return {"p": "sensor", "name": name, "unique_id": f"{uid}_{key}",
                "state_topic": topics.state, "value_template": f"{{{{ value_json.{key} }}}}",
                **extra}

    components = {
        "state": state_sensor("state", "State", icon="mdi:robot"),
        "temp_c": state_sensor("temp_c", "SoC temperature", device_class="temperature",
                               unit_of_measurement="°C", state_class="measurement"),
        "throttle_level": state_sensor("throttle_level", "Throttle level",
                                       icon="mdi:thermometer-alert"),
        "queue_depth": state_sensor("queue_depth", "Queue depth", state_class="measurement"),
        "power_w": state_sensor("power_w", "Power", device_class="power",
                                unit_of_measurement="W", state_class="measurement"),
        "answer": {"p": "sensor", "name": "Last answer", "unique_id": f"{uid}_answer",
                   "state_topic": topics.answer,
                   "value_template": "{{ value_json.text[:255] }}",
                   "json_attributes_topic": topics.answer, "icon": "mdi:message-text"},
        # min 1: clearing the box in Home Assistant sends nothing.
        "ask": {"p": "text", "name": "Ask", "unique_id": f"{uid}_ask",
                "command_topic": topics.ask, "min": 1, "max": 255,
                "icon": "mdi:chat-question"},
    }
    for action in actions:
        components[f"act_{action.name}"] = {
            "p": "button", "name": action.description or action.name,
            "unique_id": f"{uid}_act_{action.name}", "command_topic": topics.act,
            "payload_press": json.dumps({"name": action.name}), "icon": "mdi:gesture-tap"}
    for component in components.values():
        # Per component too: Home Assistant before 2026.5.2 ignores the device-level qos
        # (home-assistant/core#170166), and a question must arrive at QoS 1 to be journaled.
        component["qos"] = 1
    config = {
        "dev": {"ids": [device_id], "name": f"Appliance {device_id}", "mf": "appliance",
                "mdl": "Offline AI appliance", "sw": appliance.__version__},
        "o": {"name": "appliance", "sw": appliance.__version__},
        "availability": [{"topic": topics.status, "payload_available": "online",
                          "payload_not_available": "offline"}],
        "cmps": components,
        "qos": 1,
    }
    return Outgoing(discovery_topic(prefix, device_id), json.dumps(config).encode(),
                    retain=True)
