"""Verify, then act: phrases, the model's choice, confirmation, records, crashes, toy mode."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from appliance.actions.decision import parse_decision
from appliance.actions.registry import Registry, check_args
from appliance.actions.verifier import Verifier
from appliance.actions.world import WorldState
from appliance.bench.broker import LocalBroker, free_port
from appliance.cli import main as cli_main
from appliance.config import load_settings, parse_settings
from appliance.llm import ChatRequest, Engine
from appliance.service.supervisor import Supervisor
from tests.conftest import BASE, _config
from tests.helpers import eventually, eventually_async
from tests.services import ApplianceProcess, Broker, Message, Peer
from tests.speech import PHRASES, korean_model, sequence, speak

FAN = "zigbee2mqtt/fan/set"
ACTIONS = """world:
  topics: {greenhouse: zigbee2mqtt/greenhouse}
  publish_interval_s: 0.1
actions:
  - name: fan_on
    description: Turn the greenhouse fan on
    phrases: [turn on the fan, fan on]
    publish: {topic: zigbee2mqtt/fan/set, payload: {state: "ON"}}
    require:
      - when: "greenhouse.temperature > 25"
        fresh_s: 300
        need: the greenhouse temperature
  - name: vent_open
    description: Open the roof vent
    phrases: [open the vent]
    publish: {topic: zigbee2mqtt/vent/set, payload: {position: "{args.percent}"}}
    args: {percent: {type: integer, minimum: 10, maximum: 100}}
  - name: pump
    description: Run the watering pump
    phrases: [water the plants]
    gpio: {output: pump, value: true}
    confirm: true
actions_confirm_s: 1
gpio:
  outputs: [{name: pump, pin: 18}]
"""


def _actions_settings() -> Registry:
    return Registry(parse_settings(ACTIONS).actions)


def _answer(peer: Peer, request_id: str, timeout: float = 60) -> Message:
    return peer.wait_for(lambda m: m.topic == f"{BASE}/answer"
                         and m.json().get("id") == request_id, timeout)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``appliance ARGS`` in this process (a fresh interpreter costs ~0.5 CPU-s), as ``run_cli``.

    The same parser, command and exit code; what it printed comes from ``capsys``.
    """
    code = cli_main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["appliance", *args], code, out.out, out.err)


def _record(peer: Peer, request_id: str, verdict: str | None = None) -> dict[str, object]:
    return peer.wait_for(lambda m: m.topic == f"{BASE}/action" and m.json()["id"] == request_id
                         and (verdict is None or m.json()["verdict"] == verdict)).json()


def test_a_stale_reading_counts_as_missing() -> None:
    now = [1_000_000.0]
    world = WorldState(clock=lambda: now[0])
    verifier = Verifier(_actions_settings(), world)
    world.update("greenhouse", {"temperature": 30})
    assert verifier.check("fan_on", {}, "mqtt").ok
    now[0] += 600  # ten minutes later, nothing new
    stale = verifier.check("fan_on", {}, "mqtt")
    assert not stale.ok and stale.reason.startswith("stale: greenhouse")
    assert stale.needs == ("the greenhouse temperature",) and "10 minutes" in stale.reason


def test_toy_mode_allows_only_kid_safe_actions() -> None:
    world = WorldState()
    world.update("greenhouse", {"temperature": 30})
    toy = Verifier(_actions_settings(), world, kid_safe=True, kid_safe_actions=("fan_on",))
    assert toy.check("fan_on", {}, "voice").ok
    refused = toy.check("vent_open", {"percent": 50}, "voice")
    assert not refused.ok and refused.reason == "not allowed in toy mode"


def test_arguments_are_held_to_their_schema() -> None:
    vent = _actions_settings().actions["vent_open"]
    assert check_args(vent, {"percent": 50}) is None
    for bad in ({}, {"percent": 5}, {"percent": "50"}, {"percent": 50, "x": 1},
                {"percent": True}, [50]):
        assert check_args(vent, bad) is not None, bad


@pytest.mark.slow
@pytest.mark.parametrize("question", [
    "Turn on the fan please.", "Open the vent half way.", "It is very hot in here.",
    "What is the capital of France?", "Water the tomatoes.", "Open the vent all the way.",
    "Can you cool the greenhouse?", "Say hello.", "Close everything.", "Vent to 5 percent.",
    "How are you?", "Fan!", "Please open the roof vent to 80.", "I need water for the plants.",
    "Is it warm?", "Open the vent to 150 percent.", "Tell me a joke.", "Ventilate.",
    "Run the pump.", "Stop the fan."])
def test_the_model_only_ever_names_allowed_actions_with_valid_args(
        engine: Engine, question: str) -> None:
    registry = _actions_settings()
    names = list(registry.actions)
    reply = engine.complete(ChatRequest(
        question, max_tokens=60, json_schema=registry.decision_schema(names),
        system_prompt=f"{engine.settings.system_prompt}\n\n{registry.tool_list(names)}"))
    json.loads(reply.text)  # always whole JSON (60 tokens are enough for these replies)
    decision = parse_decision(reply.text)
    assert (decision.answer is None) != (decision.action is None)
    if decision.action is not None:
        assert decision.action in names
        assert check_args(registry.actions[decision.action], decision.args) is None


@pytest.mark.slow
def test_confirmation_yes_acts_no_and_silence_decline(
        tmp_path: Path, model_path: Path, broker: Broker) -> None:
    factory = MockFactory()
    settings = load_settings(_config(tmp_path, model_path, broker.port,
                                     root=ACTIONS + "  enabled: true\n"))
    peer = Peer(broker.port, [f"{BASE}/#"])
    pump = factory.pin(18)

    async def scenario() -> None:
        supervisor = Supervisor(settings, tmp_path / "config.yaml", pin_factory=factory)
        running = asyncio.create_task(supervisor.run())
        await eventually_async(lambda: supervisor.status.ready, 300, "ready supervisor")
        wait = asyncio.to_thread
        for request_id, confirm in (("yes1", True), ("no1", False), ("quiet", None)):
            peer.publish(f"{BASE}/ask", json.dumps({"id": request_id,
                                                    "text": "water the plants"}))
            asked = (await wait(_answer, peer, request_id)).json()
            assert asked["verdict"] == "awaiting_confirmation" and asked["text"].startswith(
                "Shall I")
            if confirm is not None:
                peer.publish(f"{BASE}/cmd/confirm", json.dumps({"id": request_id,
                                                                "yes": confirm}))
            final = await wait(_record, peer, request_id,
                               "done" if confirm else "declined")
            assert final["action"] == "pump"
            if confirm:
                assert pump.state is True
                supervisor.gpio.set_output("pump", False)  # off again for the next two
        peer.publish(f"{BASE}/cmd/confirm", json.dumps({"id": "never", "yes": True}))
        error = await wait(peer.wait_for, lambda m: m.topic == f"{BASE}/error"
                           and m.json().get("id") == "never")
        assert "no action waits" in error.json()["error"]
        assert pump.state is False  # no and silence did not act
        supervisor.stop.set()
        assert await running == 0

    try:
        asyncio.run(scenario())
    finally:
        peer.close()
        factory.reset()


HOT_ACT = ("  - name: hot_act\n    source: hotbox\n    when: temperature > 40\n"
           "    prompt: The greenhouse is at {temperature} degrees. Turn the fan on.\n"
           "    min_interval_s: 0\n    actions: [fan_on]\n")
"""A rule that may propose ``fan_on``: the rule test's, on the shared device."""


@pytest.fixture(scope="module")
def acting(module_start: Callable[..., ApplianceProcess],
           module_broker: Broker) -> Iterator[tuple[ApplianceProcess, Peer]]:
    """One device with :data:`ACTIONS` and :data:`HOT_ACT` for the tests that ask and act.

    They use their own request ids and touch different things (the retained
    discovery; the hotbox rule; the fan; the world and the vent). The greenhouse
    reading is the one thing they share: the rule test and the fan test need it
    absent at first, so they come before the tests that send one (in this file's
    order, which pytest keeps). ``peer`` subscribed before the device started.
    """
    peer = Peer(module_broker.port, [f"{BASE}/#", "homeassistant/#"])
    try:
        yield module_start(root=HOT_ACT + ACTIONS), peer
    finally:
        peer.close()


@pytest.mark.slow
def test_the_discovery_lists_the_action_buttons(acting: tuple[ApplianceProcess, Peer]) -> None:
    _, peer = acting
    discovery = peer.wait_for(lambda m: m.topic == "homeassistant/device/t1/config").json()
    buttons = {k: c for k, c in discovery["cmps"].items() if c["p"] == "button"}
    assert set(buttons) == {"act_fan_on", "act_vent_open", "act_pump"}
    assert buttons["act_fan_on"]["command_topic"] == f"{BASE}/cmd/act"
    assert json.loads(buttons["act_fan_on"]["payload_press"]) == {"name": "fan_on"}


@pytest.mark.slow
def test_a_rule_with_actions_lets_the_model_propose_and_the_verifier_decide(
        acting: tuple[ApplianceProcess, Peer]) -> None:
    _, peer = acting  # no greenhouse reading yet: the fan test and those after send them
    peer.publish(f"{BASE}/event/hotbox", json.dumps({"temperature": 45}))
    alert = peer.wait_for(lambda m: m.topic == f"{BASE}/alert", 90).json()
    if "verdict" in alert:  # the model proposed: the verifier decided (no reading: refused)
        record = _record(peer, alert["id"])
        assert record["source"] == "sensor" and record["action"] == "fan_on"
        assert record["verdict"] == "refused" and record["needs"]
    else:
        assert alert["text"] and alert["tokens"] > 0


@pytest.mark.slow
def test_the_fan_phrase_follows_the_greenhouse_reading(
        acting: tuple[ApplianceProcess, Peer], module_broker: Broker) -> None:
    _, peer = acting  # no greenhouse reading yet: only the tests after this one send one
    fan = Peer(module_broker.port, [FAN])
    try:
        peer.publish(f"{BASE}/ask", json.dumps({"id": "a1", "text": "Turn on the fan!"}))
        refused = _answer(peer, "a1").json()
        assert refused["verdict"] == "refused" and refused["action"] == "fan_on"
        assert refused["needs"] == ["the greenhouse temperature"]
        assert "greenhouse" in refused["text"] and "sensor" in refused["text"]
        assert _record(peer, "a1")["needs"] == ["the greenhouse temperature"]
        peer.publish("zigbee2mqtt/greenhouse", json.dumps({"temperature": 30}))
        peer.wait_for(lambda m: m.topic == f"{BASE}/world"
                      and m.json().get("greenhouse", {}).get("fields") == {"temperature": 30})
        peer.publish(f"{BASE}/ask", json.dumps({"id": "a2", "text": "fan on"}))
        assert _answer(peer, "a2").json()["verdict"] == "done"
        sent = fan.wait_for(lambda m: m.topic == FAN)
        assert sent.json() == {"state": "ON"}
        peer.publish("zigbee2mqtt/greenhouse", json.dumps({"temperature": 20}))
        peer.publish(f"{BASE}/ask", json.dumps({"id": "a3", "text": "turn on the fan"}))
        cool = _answer(peer, "a3").json()
        assert cool["verdict"] == "refused" and "greenhouse.temperature > 25" in cool["reason"]
        fan.drain(2)
        assert len([m for m in fan.seen if m.topic == FAN]) == 1  # exactly once
    finally:
        fan.close()


@pytest.mark.slow
def test_appliance_act_and_world(acting: tuple[ApplianceProcess, Peer],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    app, peer = acting
    config = str(app.config)
    peer.publish("zigbee2mqtt/greenhouse", json.dumps({"temperature": 31}))
    peer.wait_for(lambda m: m.topic == f"{BASE}/world"
                  and m.json().get("greenhouse", {}).get("fields") == {"temperature": 31})
    world = _cli(capsys, "--config", config, "world", "--json")
    assert world.returncode == 0 and json.loads(world.stdout)["greenhouse"]["fields"] == {
        "temperature": 31}
    done = _cli(capsys, "--config", config, "act", "vent_open", "--args", '{"percent": 40}',
                "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["verdict"] == "done"
    wrong = _cli(capsys, "--config", config, "act", "vent_open", "--args", '{"percent": "x"}')
    assert wrong.returncode == 1 and "bad arguments" in wrong.stdout
    junk = _cli(capsys, "--config", config, "act", "vent_open", "--args", "{nope")
    assert junk.returncode == 2 and "not JSON" in junk.stderr


def _outbox(data: Path, topic: str) -> int:
    with sqlite3.connect(data / "journal.sqlite3") as db:
        return db.execute("SELECT count(*) FROM outbox WHERE topic = ?", (topic,)).fetchone()[0]


@pytest.mark.slow
def test_killed_before_the_publish_it_is_sent_once_after_restart(
        tmp_path: Path, model_path: Path) -> None:
    port = free_port()  # no broker yet: the action cannot leave before the kill
    wav = sequence([speak("음악 틀어", tmp_path / "a.wav")], tmp_path / "seq.wav")
    music = ("  - name: music\n    phrases: [음악 틀어]\n"
             "    publish: {topic: speaker/set, payload: {play: true}}\n")
    voice = (f"voice:\n  enabled: true\n  model_path: {korean_model()}\n"
             f"  grammar: [{', '.join(PHRASES)}]\n  source: {wav}\n  tts: none\n")
    config = _config(tmp_path, model_path, port, root=ACTIONS.replace(
        "actions_confirm_s:", music + "actions_confirm_s:") + voice)
    app = ApplianceProcess(tmp_path, config)
    broker = LocalBroker(tmp_path / "late", port=port)
    peer: Peer | None = None
    try:
        app.start()
        eventually(lambda: _outbox(tmp_path / "data", "speaker/set"), 60,
                   "journaled action")
        app.kill()  # verified and due, not yet sent
        broker.start()
        peer = Peer(port, ["speaker/set"])
        restarted = yaml.safe_load(config.read_text())
        restarted["voice"]["enabled"] = False  # it must not hear the phrase again
        config.write_text(yaml.safe_dump(restarted))
        app.start()
        peer.wait_for(lambda m: m.topic == "speaker/set", 60)
        peer.drain(3)
        assert [m.json() for m in peer.seen] == [{"play": True}]
    finally:
        if peer is not None:
            peer.close()
        app.close()
        broker.stop()


@pytest.mark.slow
def test_killed_after_the_publish_it_is_never_sent_twice(
        start: Callable[..., ApplianceProcess], peer: Peer, broker: Broker,
        tmp_path: Path) -> None:
    app = start(root=ACTIONS)
    vent = Peer(broker.port, ["zigbee2mqtt/vent/set"])
    try:
        peer.publish(f"{BASE}/cmd/act", json.dumps({"id": "v", "name": "vent_open",
                                                    "args": {"percent": 60}}))
        assert vent.wait_for(lambda m: True).json() == {"position": 60}
        eventually(lambda: not _outbox(tmp_path / "data", "zigbee2mqtt/vent/set"), 30,
                   "PUBACK that retires the publish from the outbox")
        app.kill()
        app.start()
        vent.drain(3)
        assert len(vent.seen) == 1
    finally:
        vent.close()


@pytest.mark.slow
def test_bad_action_configs_are_one_line_each(tmp_path: Path, model_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cases = {"kid_safe_actions: [nope]": "voice:\n  kid_safe_actions: [nope]\n",
             "args": ACTIONS.replace("type: integer", "type: float"),
             "names nothing": ACTIONS.replace("greenhouse.temperature > 25", "1 < 2"),
             "topic": ACTIONS.replace("zigbee2mqtt/fan/set", "homeassistant/x")}
    for name, extra in cases.items():
        cfg = tmp_path / f"{name.replace(' ', '_')}.yaml"
        cfg.write_text(f"llm:\n  model_path: {model_path}\n" + extra)
        done = _cli(capsys, "--config", str(cfg), "config", "check")
        assert done.returncode == 2, name
        assert len(done.stderr.strip().splitlines()) == 1 and str(cfg) in done.stderr
