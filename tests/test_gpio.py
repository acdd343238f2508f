"""GPIO on gpiozero's MockFactory: inputs become events and alerts, outputs follow the heat."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance.bench.broker import LocalBroker
from appliance.config import load_settings, parse_settings
from appliance.gpio import GpioDevices, GpioUnavailable
from appliance.protocol.messages import Request
from appliance.service.supervisor import Supervisor
from tests.conftest import STORY, device_config
from tests.helpers import eventually, eventually_async
from tests.services import Peer, run_supervisor
from tests.speech import korean_model

GPIO_YAML = """gpio:
  enabled: true
  inputs:
    - {name: kiosk_button, pin: 17, kind: button}
    - {name: hall_motion, pin: 4, kind: motion, pull_up: false}
  status_led: 22
  fan: 23
  buzzer: 24
  fan_on_c: 65
  fan_off_c: 55
"""


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    f.reset()


def test_inputs_become_events_and_outputs_follow(factory: MockFactory) -> None:
    events: list[tuple[str, dict[str, object]]] = []
    parts = GpioDevices(parse_settings(GPIO_YAML).gpio,
                      lambda name, event: events.append((name, event)), factory)
    try:
        factory.pin(17).drive_low()  # pressed (pull-up)
        factory.pin(17).drive_high()
        assert events == [("kiosk_button", {"state": "pressed", "value": 1}),
                          ("kiosk_button", {"state": "released", "value": 0})]
        factory.pin(4).drive_high()
        motion = parts.inputs["hall_motion"]
        eventually(lambda: motion.is_active, 5, "motion (sampled on a thread)", 0.02)
        assert motion.is_active
        fan, led = factory.pin(23), factory.pin(22)
        parts.show_level(0, 60.0)
        assert not fan.state and not led.state and parts.fan_on is False
        parts.show_level(1, 66.0)
        assert fan.state and led.state and parts.fan_on is True  # as the console shows it
        parts.show_level(0, 58.0)  # between off and on: the fan keeps running
        assert fan.state and not led.state
        parts.show_level(0, 54.0)
        assert not fan.state and parts.fan_on is False
        parts.alert()
        assert parts.buzzer is not None
        parts.buzzer._blink_thread.join(2)  # gpiozero beeps on its own thread
        states = [s.state for s in factory.pin(24).states]
        assert states == [False, True, False, True, False]
    finally:
        parts.close()


def test_fan_runs_while_the_sensor_is_lost(factory: MockFactory) -> None:
    parts = GpioDevices(parse_settings(GPIO_YAML).gpio, lambda *_: None, factory)
    try:
        fan, led = factory.pin(23), factory.pin(22)
        parts.show_level(0, 50.0)
        assert not fan.state
        parts.show_level(0, None, sensor_lost=True)  # unknown: cool it, whatever it was
        assert fan.state and not led.state
        parts.show_level(2, None, sensor_lost=True)
        assert fan.state and led.state
        parts.show_level(0, 50.0)  # a reading returns: the hysteresis decides again
        assert not fan.state
        parts.show_level(0, None)  # no thermal zone at all: the fan is left as it is
        assert not fan.state
        parts.show_level(0, 70.0)
        parts.show_level(0, None)
        assert fan.state
    finally:
        parts.close()


def test_no_gpio_is_a_clear_error() -> None:
    with pytest.raises(GpioUnavailable, match="GPIO unavailable"):
        GpioDevices(parse_settings(GPIO_YAML).gpio, lambda *_: None)


@pytest.mark.slow
def test_button_press_raises_an_alert_and_fan_follows_heat(
        tmp_path: Path, model_path: Path, factory: MockFactory) -> None:
    broker = LocalBroker(tmp_path / "broker")
    broker.start()
    zone = tmp_path / "temp"
    zone.write_text("50000\n")
    cfg = device_config(
        tmp_path, model_path, broker.port, "g1", 24,
        yaml.safe_load(f"thermal:\n  zone_path: {zone}\n  interval_s: 0.1\n"
        "rules:\n  - name: visitor\n    source: kiosk_button\n    when: state == 'pressed'\n"
        "    prompt: A visitor pressed the help button. Greet them in one sentence.\n"
        + GPIO_YAML))
    settings = load_settings(cfg)
    peer = Peer(broker.port, ["appliance/g1/#"])

    async def press_then_heat(_supervisor: Supervisor) -> None:
        factory.pin(17).drive_low()
        factory.pin(17).drive_high()
        await asyncio.to_thread(peer.wait_for, lambda m: m.topic == "appliance/g1/alert")
        assert not factory.pin(23).state
        zone.write_text("72000\n")
        await eventually_async(lambda: factory.pin(23).state, 60, "fan on when warm")
        assert factory.pin(22).state  # warm: the status LED is lit

    try:
        run_supervisor(settings, cfg, factory, press_then_heat)
        alert = peer.wait_for(lambda m: m.topic == "appliance/g1/alert").json()
        assert alert["rule"] == "visitor" and alert["source"] == "sensor"
        pressed = peer.wait_for(lambda m: m.topic == "appliance/g1/event/kiosk_button").json()
        assert pressed == {"state": "pressed", "value": 1}
        assert not [m for m in peer.seen if m.topic == "appliance/g1/error"]
    finally:
        peer.close()
        broker.stop()


@pytest.mark.slow
def test_button_works_while_the_broker_is_down(
        tmp_path: Path, model_path: Path, factory: MockFactory) -> None:
    """Offline, a press still fires its rule; the alert and the event go out once it is back."""
    broker = LocalBroker(tmp_path / "broker")
    broker.start()
    cfg = device_config(
        tmp_path, model_path, broker.port, "o1", 24,
        yaml.safe_load(f"thermal:\n  zone_path: {tmp_path / 'temp'}\n"
        "rules:\n  - name: visitor\n    source: kiosk_button\n    when: state == 'pressed'\n"
        "    prompt: A visitor pressed the help button. Greet them in one sentence.\n"
        + GPIO_YAML))
    peer = Peer(broker.port, ["appliance/o1/#"])  # a persistent session: it gets what it missed
    broker.stop()

    async def press_offline(supervisor: Supervisor) -> None:
        answered: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        supervisor.dispatcher.answer_listeners.append(
            lambda _request, answer: answered.put_nowait(answer.to_json()))
        factory.pin(17).drive_low()  # pressed, with no broker anywhere
        factory.pin(17).drive_high()
        alert = await asyncio.wait_for(answered.get(), 120)
        assert alert["rule"] == "visitor" and alert["finish_reason"] != "error"
        await asyncio.to_thread(broker.start)
        await asyncio.to_thread(peer.wait_for, lambda m: m.topic == "appliance/o1/alert", 120)
        await asyncio.to_thread(peer.wait_for,
                                lambda m: m.topic == "appliance/o1/event/kiosk_button", 60)
        # The broker keeps one client's messages in order: once this ask is answered,
        # an echo of our own event (sent before it) would have queued a second alert.
        await asyncio.to_thread(peer.publish, "appliance/o1/ask",
                                b'{"id": "after-echo", "text": "Say hi.", "max_tokens": 2}')
        await asyncio.to_thread(peer.wait_for, lambda m: m.topic == "appliance/o1/answer"
                                and m.json().get("id") == "after-echo", 120)
        dispatcher = supervisor.dispatcher
        assert dispatcher.queue.queued_for_rule("visitor") is None
        assert dispatcher.running is None or dispatcher.running.rule != "visitor"

    try:
        run_supervisor(load_settings(cfg), cfg, factory, press_offline)
        alerts = [m for m in peer.seen if m.topic == "appliance/o1/alert"]
        assert len(alerts) == 1 and alerts[0].json()["rule"] == "visitor"
        pressed = [m.json() for m in peer.seen if m.topic == "appliance/o1/event/kiosk_button"]
        assert pressed[:1] == [{"state": "pressed", "value": 1}]
        assert not [m for m in peer.seen if m.topic == "appliance/o1/error"]
    finally:
        peer.close()
        broker.stop()


@pytest.mark.slow
def test_state_leds_follow_thinking_and_voice_errors(
        tmp_path: Path, model_path: Path, factory: MockFactory) -> None:
    broker = LocalBroker(tmp_path / "broker")
    broker.start()
    cfg = device_config(
        tmp_path, model_path, broker.port, "s1", 48,
        yaml.safe_load(f"thermal:\n  zone_path: {tmp_path / 'temp'}\n"
        f"voice:\n  enabled: true\n  model_path: {korean_model()}\n  source: mic\n"
        "  device: hw:99\n  tts: none\n"
        "gpio:\n  enabled: true\n  state_leds: {listening: 5, thinking: 6, speaking: 13, "
        "error: 19}\n"))
    peer = Peer(broker.port, ["appliance/s1/#"])

    async def think(supervisor: Supervisor) -> None:
        # no microphone here: the error LED comes on
        await eventually_async(lambda: factory.pin(19).state, 60, "error LED on")
        supervisor.dispatcher.submit(Request(id="t", source="mqtt", text=STORY))
        await eventually_async(lambda: factory.pin(6).state, 60, "thinking LED on", 0.01)
        assert not factory.pin(5).state and not factory.pin(13).state
        await asyncio.to_thread(peer.wait_for, lambda m: m.topic == "appliance/s1/answer")
        await eventually_async(lambda: not factory.pin(6).state, 10, "thinking LED off")
        assert not factory.pin(6).state and factory.pin(19).state

    try:
        run_supervisor(load_settings(cfg), cfg, factory, think)
    finally:
        peer.close()
        broker.stop()
