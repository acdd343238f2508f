"""Who may act, through which door: the APIs' settings, toy mode, confirmations, their ids.

Each door is tried against ``appliance run`` (or, for the microphone, a real
supervisor in this process) with a real mosquitto; one peer hears both the
device's records and the devices it would move, so a record that arrives
proves that the publish it would follow has, or has not, come before it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from wyoming.asr import Transcript
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.handle import Handled

from appliance.actions.executor import Executor
from appliance.actions.registry import Registry
from appliance.actions.service import ActionService
from appliance.actions.verifier import Verifier
from appliance.actions.world import WorldState
from appliance.bench.broker import free_port
from appliance.config import load_settings, parse_settings
from appliance.service.action_desk import closed_entrances
from appliance.service.supervisor import Supervisor
from tests.conftest import BASE, _config
from tests.helpers import MODEL, LazyModule, keep_notify_drained
from tests.services import ApplianceProcess, Broker, Message, Peer, run_supervisor
from tests.speech import PHRASES, Microphone, korean_model, pcm_of, speak

ollama = LazyModule("ollama")

VALVE, PUMP, DOOR, MUSIC = "site/valve/set", "site/pump/set", "site/door/set", "site/music/set"
ACTIONS = """actions:
  - name: valve_open
    description: Open the valve
    phrases: [open the valve]
    publish: {topic: site/valve/set, payload: {state: OPEN}}
  - name: pump
    description: Run the watering pump
    phrases: [water the plants]
    publish: {topic: site/pump/set, payload: {state: "ON"}}
    confirm: true
  - name: unlock
    description: Unlock the front door
    phrases: [unlock the door]
    publish: {topic: site/door/set, payload: {lock: UNLOCK}}
    confirm: true
actions_confirm_s: 60
"""


def _apis(wyoming: str = "", http: str = "") -> tuple[str, int, int]:
    """``api:`` YAML with Wyoming and HTTP on free loopback ports, and the two ports."""
    wport, hport = free_port(), free_port()
    return (f"api:\n  wyoming: {{listen: 'tcp://127.0.0.1:{wport}', zeroconf: false{wyoming}}}\n"
            f"  http: {{listen: '127.0.0.1:{hport}'{http}}}\n", wport, hport)


def _transcript(port: int, text: str) -> Event:
    """What the Wyoming server answers to ``text``, as Home Assistant sends it."""
    async def scenario() -> Event:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Transcript(text=text).event())
            while True:
                event = await asyncio.wait_for(client.read_event(), 120)
                assert event is not None, "disconnected without an answer"
                if event.type in ("handled", "not-handled", "error"):
                    return event

    return asyncio.run(scenario())


def _chat(port: int, text: str, token: str | None = None) -> str:
    """The Ollama client's answer to ``text`` over the HTTP API."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    client = ollama.Client(host=f"http://127.0.0.1:{port}", headers=headers, timeout=120)
    reply = client.chat(model=MODEL, stream=False, messages=[{"role": "user", "content": text}])
    return reply.message.content or ""


def _record(peer: Peer, source: str, timeout: float = 60) -> dict[str, object]:
    """The first action record of ``source``."""
    return peer.wait_for(lambda m: m.topic == f"{BASE}/action"
                         and m.json()["source"] == source, timeout).json()


def _sent(peer: Peer, topic: str) -> list[Message]:
    return [m for m in peer.seen if m.topic == topic]


@pytest.fixture
def site(broker: Broker) -> Iterator[Peer]:
    """A peer that hears the device's records and every device it could move."""
    p = Peer(broker.port, [f"{BASE}/#", "site/#"])
    yield p
    p.close()


@pytest.fixture(scope="module")
def default_doors(module_start: Callable[..., ApplianceProcess]) -> tuple[ApplianceProcess,
                                                                         int, int]:
    """One device with :data:`ACTIONS` and both APIs as they are by default; their ports.

    Its tests act with their own ids and read their own records. The module's
    last test stops it (stopping is what it checks), so it must stay the last.
    """
    apis, wport, hport = _apis()
    app = module_start(extra=apis, root=ACTIONS)
    keep_notify_drained(app)
    return app, wport, hport


@pytest.fixture
def default_site(default_doors: tuple[ApplianceProcess, int, int],
                 module_broker: Broker) -> Iterator[Peer]:
    """:func:`site` for :func:`default_doors`' device (what is retained, and what is new)."""
    p = Peer(module_broker.port, [f"{BASE}/#", "site/#"])
    yield p
    p.close()


def test_the_settings_close_the_api_doors_and_the_model_is_offered_nothing() -> None:
    default = parse_settings("api:\n  wyoming: {}\n  http: {}\n" + ACTIONS)
    closed = closed_entrances(default)
    assert set(closed) == {"wyoming", "http"}
    assert "api.wyoming.actions" in closed["wyoming"]
    assert "api.http.token_file" in closed["http"]
    assert "api.http.actions: false" in closed_entrances(parse_settings(
        "api:\n  http: {actions: false}\n"))["http"]
    assert closed_entrances(parse_settings(
        "api:\n  wyoming: {actions: true}\n  http: {actions: true}\n")) == {}
    verifier = Verifier(Registry(default.actions), WorldState(), closed=closed)
    service = ActionService(verifier, Executor(lambda *_: None, None), lambda _r: None, 60)
    names = list(verifier.registry.actions)
    assert service.offered("wyoming", names) == [] and service.offered("http", names) == []
    assert service.offered("mqtt", names) == names and service.offered("voice", names) == names
    # The console's Talk page is behind its login: it may act, token or not.
    assert service.offered("console", names) == names
    refused = verifier.check("valve_open", {}, "wyoming")
    assert not refused.ok and "api.wyoming.actions" in refused.reason
    unknown = verifier.check("valve_open", {}, "api")  # an entrance nobody named: fail closed
    assert not unknown.ok and "'api'" in unknown.reason


@pytest.mark.slow
def test_wyoming_and_http_without_a_token_cannot_act_by_default(
        default_doors: tuple[ApplianceProcess, int, int], default_site: Peer) -> None:
    _, wport, hport = default_doors
    site = default_site
    event = _transcript(wport, "open the valve")
    assert event.type == "handled" and "api.wyoming.actions" in (
        Handled.from_event(event).text or "")
    record = _record(site, "wyoming")
    assert record["verdict"] == "refused" and "api.wyoming.actions" in str(record["reason"])
    assert "api.http" in _chat(hport, "Open the valve!")
    record = _record(site, "http")
    assert record["verdict"] == "refused" and "without a token" in str(record["reason"])
    assert _sent(site, VALVE) == []  # a publish would have come before its record


@pytest.mark.slow
def test_the_apis_act_when_their_setting_allows_it(
        start: Callable[..., ApplianceProcess], site: Peer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("entrance-test-token\n")
    apis, wport, hport = _apis(", actions: true", f", token_file: {token}")  # http: auto
    keep_notify_drained(start(extra=apis, root=ACTIONS))
    assert Handled.from_event(_transcript(wport, "open the valve")).text == "Done."
    assert _record(site, "wyoming")["verdict"] == "done"
    assert _chat(hport, "open the valve", "entrance-test-token") == "Done."
    assert _record(site, "http")["verdict"] == "done"
    assert [m.json() for m in _sent(site, VALVE)] == [{"state": "OPEN"}] * 2


@pytest.mark.slow
def test_toy_mode_refuses_through_every_door_that_carries_words(
        start: Callable[..., ApplianceProcess], site: Peer) -> None:
    apis, wport, hport = _apis(", actions: true", ", actions: true")
    keep_notify_drained(start(extra=apis + "voice:\n  kid_safe: true\n", root=ACTIONS))
    assert Handled.from_event(_transcript(wport, "open the valve")).text == (
        "That's something a grown-up has to do.")
    assert _record(site, "wyoming")["reason"] == "not allowed in toy mode"
    _chat(hport, "open the valve")
    assert _record(site, "http")["reason"] == "not allowed in toy mode"
    assert _sent(site, VALVE) == []
    site.publish(f"{BASE}/cmd/act", json.dumps({"id": "op", "name": "valve_open"}))
    assert _record(site, "mqtt")["verdict"] == "done"  # the operator's button still acts
    assert site.wait_for(lambda m: m.topic == VALVE).json() == {"state": "OPEN"}


@pytest.mark.slow
def test_a_spoken_yes_answers_only_a_spoken_question(
        tmp_path: Path, model_path: Path, broker: Broker, mic: Microphone) -> None:
    music = ("  - name: music\n    description: Play music\n    phrases: [음악 틀어]\n"
             f"    publish: {{topic: {MUSIC}, payload: {{play: true}}}}\n    confirm: true\n")
    voice = (f"voice:\n  enabled: true\n  model_path: {korean_model()}\n"
             f"  grammar: [{', '.join(PHRASES)}]\n  intents: {{안녕하세요: 'yes'}}\n"
             "  source: stdin\n  tts: none\n  activation: always\n  end_silence_s: 0.4\n"
             "  kid_safe: true\n  kid_safe_actions: [music]\n")
    config = _config(tmp_path, model_path, broker.port,
                     root=ACTIONS.replace("actions_confirm_s:", music + "actions_confirm_s:")
                     + voice)
    play, yes = (pcm_of(speak(text, tmp_path / f"{n}.wav"))
                 for n, text in (("play", "음악 틀어"), ("yes", "안녕하세요")))
    site = Peer(broker.port, [f"{BASE}/#", "site/#"])

    def record(request_id: str, verdict: str) -> dict[str, object]:
        return site.wait_for(lambda m: m.topic == f"{BASE}/action" and m.json()["id"] ==
                             request_id and m.json()["verdict"] == verdict, 90).json()

    async def scenario(_: Supervisor) -> None:
        wait = asyncio.to_thread
        def state(name: str) -> Callable[[Message], bool]:
            return lambda m: m.topic == f"{BASE}/state" and m.json()["state"] == name

        def asked_for_music(m: Message) -> bool:  # or misheard: the model thinks it over
            return state("thinking")(m) or (
                m.topic == f"{BASE}/action" and m.json()["action"] == "music")

        for _ in range(3):  # the child asks for music: "Shall I play music?"
            after = len(site.seen)
            mic.say(play, in_a_pause=True)
            heard = await wait(site.wait_for, asked_for_music, 90, after)
            if heard.topic == f"{BASE}/action":
                break
            # vosk heard other words ("음악 음악 틀어" now and then, by where the sound
            # falls in its chunks): once the model has answered, the child says it again.
            await wait(site.wait_for, state("idle"), 90, site.seen.index(heard))
        assert heard.topic == f"{BASE}/action", "vosk misheard the request three times"
        asked = heard.json()
        assert asked["source"] == "voice" and asked["verdict"] == "awaiting_confirmation"
        site.publish(f"{BASE}/cmd/act", json.dumps({"id": "op1", "name": "unlock"}))
        await wait(record, "op1", "awaiting_confirmation")  # the operator's, asked later
        mic.say(yes, in_a_pause=True)  # the child says yes: to the music, not to the door
        assert (await wait(record, str(asked["id"]), "done"))["action"] == "music"
        site.publish(f"{BASE}/cmd/confirm", json.dumps({"id": "op1", "yes": False}))
        assert (await wait(record, "op1", "declined"))["reason"] == "declined"

    try:
        run_supervisor(load_settings(config), config, None, scenario)
        assert _sent(site, DOOR) == [] and len(_sent(site, MUSIC)) == 1
    finally:
        site.close()


@pytest.mark.slow
def test_a_duplicate_id_is_refused_while_its_question_waits(
        default_doors: tuple[ApplianceProcess, int, int], default_site: Peer) -> None:
    app, site = default_doors[0], default_site  # it stops the device: the module's last test

    def error(request_id: str, after: int) -> str:
        return str(site.wait_for(lambda m: m.topic == f"{BASE}/error"
                                 and m.json().get("id") == request_id, after=after).json()["error"])

    site.publish(f"{BASE}/ask", json.dumps({"id": "q1", "text": "water the plants"}))
    asked = site.wait_for(lambda m: m.topic == f"{BASE}/answer" and m.json()["id"] == "q1")
    assert asked.json()["text"] == "Shall I run the watering pump?"
    seen = len(site.seen)
    site.publish(f"{BASE}/cmd/act", json.dumps({"id": "q1", "name": "unlock"}))
    assert "'q1' is still waiting for a yes or no" in error("q1", seen)
    seen = len(site.seen)
    site.publish(f"{BASE}/ask", json.dumps({"id": "q1", "text": "unlock the door"}))
    assert "'q1' is still waiting for a yes or no" in error("q1", seen)
    site.publish(f"{BASE}/cmd/confirm", json.dumps({"id": "q1", "yes": True}))
    assert site.wait_for(lambda m: m.topic == PUMP).json() == {"state": "ON"}
    site.publish(f"{BASE}/cmd/act", json.dumps({"id": "later", "name": "pump"}))
    site.wait_for(lambda m: m.topic == f"{BASE}/action" and m.json()["id"] == "later")
    records = [(m.json()["action"], m.json()["verdict"]) for m in site.seen
               if m.topic == f"{BASE}/action" and m.json()["id"] == "q1"]
    assert records == [("pump", "awaiting_confirmation"), ("pump", "done")]  # one end each
    assert _sent(site, DOOR) == []
    assert app.terminate() == 0  # "later" still waits: stopping ends it in a record too
    stopped = site.wait_for(lambda m: m.topic == f"{BASE}/action" and m.json()["id"] == "later"
                            and m.json()["verdict"] == "declined", 30).json()
    assert stopped["reason"] == "the appliance stopped"
