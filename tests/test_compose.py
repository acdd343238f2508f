"""The composition root: every part gets its collaborators when it is built, never later."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance.actions.world import WorldState
from appliance.config import parse_settings
from appliance.generate.local import ModelWorker
from appliance.generate.mqtt_remote import MqttGenerator
from appliance.gpio import GpioDevices
from appliance.mqtt.bridge import Bridge
from appliance.power.monitor import PowerMonitor
from appliance.service.action_desk import ActionDesk
from appliance.service.compose import compose
from appliance.service.dispatcher import Dispatcher
from appliance.service.inbox import Inbox
from appliance.service.intake import Intake
from appliance.service.journal import Journal
from appliance.service.outlets import Outlets
from appliance.service.router import Router
from appliance.service.state_outlet import StateOutlet
from appliance.service.status import Status
from appliance.thermal import ThermalWatchdog
from appliance.voice.controller import VoiceController

PART_CLASSES = (Journal, WorldState, ModelWorker, MqttGenerator, Inbox, GpioDevices, Bridge,
                Router, ActionDesk, PowerMonitor, VoiceController, Outlets, Dispatcher,
                Intake, StateOutlet, ThermalWatchdog)

CONFIG = """
device_id: c1
mqtt: {{port: 1}}
escalation: {{enabled: true, mqtt_topic: appliance/big/ask}}
voice: {{enabled: true, tts: none, source: mic, device: hw:99}}
thermal: {{zone_path: {zone}}}
gpio:
  enabled: true
  inputs: [{{name: door, pin: 17, kind: button}}]
  outputs: [{{name: lamp, pin: 5}}]
  status_led: 22
actions:
  - name: light
    description: Turn the light on.
    gpio: {{output: lamp, value: true}}
rules:
  - {{name: door, source: door, prompt: The door.}}
"""


@pytest.fixture
def snapshots(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[int, dict[str, int]]]:
    """What each part's ``__init__`` set: attribute name -> the identity of its value."""
    taken: dict[int, dict[str, int]] = {}

    def wrap(original: Callable[..., None]) -> Callable[..., None]:
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            taken[id(self)] = {name: id(value) for name, value in vars(self).items()}
        return init

    for cls in PART_CLASSES:
        monkeypatch.setattr(cls, "__init__", wrap(cls.__init__))
    yield taken


def test_no_part_is_wired_after_it_is_built(
        tmp_path: Path, snapshots: dict[int, dict[str, int]]) -> None:
    zone = tmp_path / "temp"
    zone.write_text("40000\n")
    settings = parse_settings(f"data_dir: {tmp_path}\n" + CONFIG.format(zone=zone), "c.yaml")
    factory = MockFactory(pin_class=MockPWMPin)

    async def build() -> list[object]:
        service = await compose(settings, None, Status(), pin_factory=factory)
        try:
            return [*service.parts(), service.dispatcher.outlets]
        finally:
            service.journal.close()
            if service.gpio is not None:
                service.gpio.close()

    try:
        parts = asyncio.run(build())
    finally:
        factory.reset()
    checked = 0
    for part in parts:
        if type(part) not in PART_CLASSES:
            continue
        built = snapshots[id(part)]
        now = {name: id(value) for name, value in vars(part).items()}
        assert now == built, f"{type(part).__name__} was changed from outside after __init__: " \
            f"{sorted(k for k in now.keys() | built.keys() if now.get(k) != built.get(k))}"
        checked += 1
    assert checked >= 14  # every part above was built (the optional ones too)
