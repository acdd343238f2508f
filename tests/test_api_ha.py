"""A real Home Assistant (2025.4.4) against ``appliance run``: MQTT, Wyoming and Ollama, end to end.

Opt-in (``APPLIANCE_TEST_HA=1``): Home Assistant needs Python 3.13 and about
800 MB, so it lives in its own venv under ``~/.cache/appliance-ha`` (made on
the first run with pip's cache, several minutes; ``$APPLIANCE_HA_PYTHON``
names the interpreter). Its TTS conversion needs ``ffmpeg``. Home Assistant
is onboarded headless through its REST API, the integrations are added
through the same config flows the UI uses, and it runs with the older
clients it pins (``wyoming==1.5.4``, ``ollama==0.4.7``), which the appliance
serves as it serves the newest.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import subprocess
import threading
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from appliance.bench.broker import free_port
from tests.helpers import MODEL, eventually, keep_notify_drained, llm_config, write_config
from tests.services import ApplianceProcess, Broker
from tests.speech import PHRASES, korean_model, speak

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("APPLIANCE_TEST_HA") != "1",
                       reason="a real Home Assistant: set APPLIANCE_TEST_HA=1 (800 MB)"),
]

HA_VERSION = "2025.4.4"
PINNED = ("wyoming==1.5.4", "ollama==0.4.7", "paho-mqtt==2.1.0",
          "home-assistant-frontend==20250411.0")
"""What the wyoming, ollama, mqtt and frontend manifests require (hass runs with --skip-pip;
without its frontend, Home Assistant starts in recovery mode)."""
HA_PYTHON = Path(os.environ.get("APPLIANCE_HA_PYTHON", "/root/.pyenv/versions/3.13.0/bin/python"))
CACHE = Path(os.environ.get("APPLIANCE_HA_CACHE", "~/.cache/appliance-ha")).expanduser()
CLIENT_ID = "http://127.0.0.1/"


def ha_venv() -> Path:
    """Home Assistant's venv, made once (and again if a make was cut short)."""
    venv = CACHE / f"venv-{HA_VERSION}"
    ready = venv / ".appliance-ready"
    if ready.exists():
        return venv
    if not HA_PYTHON.is_file():
        pytest.skip(f"Home Assistant {HA_VERSION} needs Python 3.13: set APPLIANCE_HA_PYTHON")
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(HA_PYTHON), "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, f"homeassistant=={HA_VERSION}", *PINNED], check=True, timeout=3600)
    ready.touch()
    return venv


class HomeAssistant:
    """``hass`` in its own venv, onboarded, with a REST and a websocket client."""

    def __init__(self, venv: Path, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "ha"
        self.config.mkdir()
        (self.config / "configuration.yaml").write_text(
            "homeassistant:\n  name: Appliance test\n  latitude: 37.5\n  longitude: 127.0\n"
            "  elevation: 0\n  unit_system: metric\n  time_zone: UTC\n  country: KR\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.port}\n"
            "api:\nconfig:\nonboarding:\nwebsocket_api:\nconversation:\nassist_pipeline:\n")
        self.log = (workdir / "ha.log").open("wb")
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "hass"), "--config", str(self.config), "--skip-pip"],
            stdout=self.log, stderr=subprocess.STDOUT)
        try:
            eventually(self._up, 300, "Home Assistant HTTP server", 0.5)
            self.token = self._onboard()
        except BaseException:
            self.close()
            raise
        self.http = httpx.Client(base_url=self.url, timeout=120,
                                 headers={"Authorization": f"Bearer {self.token}"})

    def _up(self) -> bool:
        assert self.proc.poll() is None, "hass exited; see ha.log"
        try:
            return httpx.get(f"{self.url}/api/onboarding", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _onboard(self) -> str:
        user = httpx.post(f"{self.url}/api/onboarding/users", timeout=60, json={
            "client_id": CLIENT_ID, "name": "Test", "username": "test",
            "password": "test-password-1", "language": "en"})
        user.raise_for_status()
        token = httpx.post(f"{self.url}/auth/token", timeout=60, data={
            "grant_type": "authorization_code", "code": user.json()["auth_code"],
            "client_id": CLIENT_ID})
        token.raise_for_status()
        return str(token.json()["access_token"])

    def flow(self, handler: str, *steps: dict[str, Any]) -> list[dict[str, Any]]:
        """Run a config flow as the UI does; every result, the first form's included."""
        result = self.http.post("/api/config/config_entries/flow",
                                json={"handler": handler, "show_advanced_options": False})
        result.raise_for_status()
        results = [result.json()]
        for data in steps:
            step = self.http.post(f"/api/config/config_entries/flow/{results[0]['flow_id']}",
                                  json=data)
            step.raise_for_status()
            results.append(step.json())
        return results

    def states(self, prefix: str = "") -> list[dict[str, Any]]:
        return [s for s in self.http.get("/api/states").json()
                if s["entity_id"].startswith(prefix)]

    async def ws(self, *commands: dict[str, Any], binary: list[bytes] | None = None,
                 until: str = "result") -> list[dict[str, Any]]:
        """Send commands on one websocket; messages until one of type ``until`` (or event type)."""
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"ws://127.0.0.1:{self.port}/api/websocket") as ws:
            assert (await ws.receive_json())["type"] == "auth_required"
            await ws.send_json({"type": "auth", "access_token": self.token})
            assert (await ws.receive_json())["type"] == "auth_ok"
            messages: list[dict[str, Any]] = []
            for i, command in enumerate(commands, start=1):
                await ws.send_json({"id": i, **command})
                while True:
                    message = await asyncio.wait_for(ws.receive_json(), 180)
                    messages.append(message)
                    event = message.get("event", {}) if message["type"] == "event" else {}
                    if event.get("type") == "run-start" and binary is not None:
                        handler = event["data"]["runner_data"]["stt_binary_handler_id"]
                        for frame in binary:
                            await ws.send_bytes(bytes([handler]) + frame)
                        await ws.send_bytes(bytes([handler]))
                    done = message["type"] == "result" and not message.get("success", True)
                    if done or (i < len(commands) and message["type"] == "result") or (
                            i == len(commands) and until in (message["type"],
                                                             event.get("type"))):
                        break
            return messages

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class Site:
    """A broker, the appliance and Home Assistant."""

    broker: Broker
    appliance: ApplianceProcess
    http_port: int
    wyoming_port: int
    ha: HomeAssistant


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if shutil.which("ffmpeg") is None:
        pytest.skip("Home Assistant's TTS conversion needs ffmpeg (apt-get install ffmpeg)")
    venv = ha_venv()
    work = tmp_path_factory.mktemp("ha-site")
    broker = Broker(work / "broker")
    broker.start()
    http_port, wyoming_port = free_port(), free_port()
    (work / "temp").write_text("51000\n")
    config = write_config(work / "config.yaml", {
        "device_id": "hatest", "llm": llm_config(48, 2048),
        "mqtt": {"port": broker.port, "ask_rate_per_min": 1000},
        "thermal": {"zone_path": work / "temp"},
        "voice": {"model_path": korean_model(), "grammar": list(PHRASES), "tts": "espeak-ng",
                  "tts_voice": "ko"},
        "api": {"http": {"listen": f"127.0.0.1:{http_port}"},
                "wyoming": {"listen": f"tcp://127.0.0.1:{wyoming_port}", "zeroconf": False}}})
    appliance = ApplianceProcess(work, config)
    try:
        appliance.start()
        keep_notify_drained(appliance)
        ha = HomeAssistant(venv, work)
        try:
            yield Site(broker, appliance, http_port, wyoming_port, ha)
        finally:
            ha.close()
    finally:
        appliance.close()
        broker.stop()


def test_mqtt_discovery_entities_ask_at_qos_1(site: Site) -> None:
    ha = site.ha
    results = ha.flow("mqtt", {"broker": "127.0.0.1", "port": site.broker.port})
    assert results[-1]["type"] == "create_entry", results
    texts = eventually(lambda: _ours(ha, "text."), 120, "Ask text entity", 0.5)
    sensors = eventually(lambda: [s for s in _ours(ha, "sensor.")
                                  if s["state"] != "unavailable"], 120, "available sensors", 0.5)
    assert len(sensors) >= 5
    received: queue.Queue[paho.MQTTMessage] = queue.Queue()
    watcher = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    subscribed = threading.Event()
    watcher.on_message = lambda _c, _u, message: received.put(message)
    watcher.on_subscribe = lambda *_: subscribed.set()
    watcher.connect("127.0.0.1", site.broker.port)
    watcher.subscribe("appliance/hatest/ask", qos=1)
    watcher.loop_start()
    try:
        assert subscribed.wait(30), "no SUBACK for the watcher"
        ha.http.post("/api/services/text/set_value", json={
            "entity_id": texts[0]["entity_id"], "value": "What is two plus two?"}
        ).raise_for_status()
        asked = received.get(timeout=60)
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    assert asked.payload == b"What is two plus two?"
    assert asked.qos == 1, "Home Assistant published the question at QoS 0"


def _ours(ha: HomeAssistant, prefix: str) -> list[dict[str, Any]]:
    """The appliance's own MQTT entities (its device is named after its device_id)."""
    return [s for s in ha.states(prefix)
            if s["attributes"].get("friendly_name", "").startswith("Appliance hatest")]


def _wyoming_entities(ha: HomeAssistant) -> dict[str, str] | None:
    found = {domain: [s["entity_id"] for s in ha.states(f"{domain}.")
                      if "home_assistant" not in s["entity_id"]]
             for domain in ("stt", "tts", "conversation")}
    return {d: ids[0] for d, ids in found.items()} if all(found.values()) else None


@pytest.fixture(scope="module")
def wyoming(site: Site) -> dict[str, str]:
    results = site.ha.flow("wyoming", {"host": "127.0.0.1", "port": site.wyoming_port})
    assert results[-1]["type"] == "create_entry", results
    return eventually(lambda: _wyoming_entities(site.ha), 120,
                      "stt, tts and conversation entities", 0.5)


def test_wyoming_creates_stt_tts_and_conversation_from_info(wyoming: dict[str, str]) -> None:
    assert set(wyoming) == {"stt", "tts", "conversation"}


def _pipeline(ha: HomeAssistant, entities: dict[str, str]) -> str:
    created = asyncio.run(ha.ws({
        "type": "assist_pipeline/pipeline/create", "name": "Appliance",
        "language": "ko", "conversation_engine": entities["conversation"],
        "conversation_language": "ko", "stt_engine": entities["stt"], "stt_language": "ko",
        "tts_engine": entities["tts"], "tts_language": "ko", "tts_voice": "ko",
        "wake_word_entity": None, "wake_word_id": None}))
    assert created[-1]["success"], created
    return str(created[-1]["result"]["id"])


def _events(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["event"]["type"]: m["event"].get("data") or {} for m in messages
            if m["type"] == "event"}


def test_assist_pipeline_text_to_our_agent_to_our_voice(site: Site,
                                                        wyoming: dict[str, str]) -> None:
    ha = site.ha
    pipeline = _pipeline(ha, wyoming)
    messages = asyncio.run(ha.ws({
        "type": "assist_pipeline/run", "pipeline": pipeline, "start_stage": "intent",
        "end_stage": "tts", "input": {"text": "What is two plus two?"}}, until="run-end"))
    events = _events(messages)
    assert "error" not in events, events.get("error")
    speech = events["intent-end"]["intent_output"]["response"]["speech"]["plain"]["speech"]
    assert speech.strip()
    url = events["tts-end"]["tts_output"]["url"]
    audio = httpx.get(url if url.startswith("http") else ha.url + url, timeout=120)
    assert audio.status_code == 200 and len(audio.content) > 1000


def test_assist_pipeline_audio_to_our_stt(site: Site, wyoming: dict[str, str],
                                          tmp_path: Path) -> None:
    ha = site.ha
    pipeline = _pipeline(ha, wyoming)
    with wave.open(str(speak("안녕하세요", tmp_path / "hello.wav"))) as wav:
        pcm = wav.readframes(wav.getnframes())
    pcm += b"\x00\x00" * 16000  # a second of quiet after speaking, as a microphone hears it
    frames = [pcm[i: i + 2048] for i in range(0, len(pcm), 2048)]
    messages = asyncio.run(ha.ws({
        "type": "assist_pipeline/run", "pipeline": pipeline, "start_stage": "stt",
        "end_stage": "stt", "input": {"sample_rate": 16000}}, binary=frames, until="run-end"))
    events = _events(messages)
    assert "error" not in events, events.get("error")
    assert events["stt-end"]["stt_output"]["text"] == "안녕하세요"


def test_ollama_lists_our_model_without_pulling_and_its_agent_answers(site: Site) -> None:
    ha = site.ha
    url = f"http://127.0.0.1:{site.http_port}"
    results = ha.flow("ollama", {"url": url}, {"model": f"{MODEL}:latest"})
    options = results[1]["data_schema"][0]["selector"]["select"]["options"]
    assert {"label": f"{MODEL}:latest (downloaded)", "value": f"{MODEL}:latest"} in options
    assert results[-1]["type"] == "create_entry", results  # no "download" progress step
    agent = eventually(lambda: [s["entity_id"] for s in ha.states("conversation.")
                                if "home_assistant" not in s["entity_id"]
                                and s["entity_id"] not in _wyoming_agents(ha)],
                       120, "Ollama conversation entity", 0.5)[0]
    answer = asyncio.run(ha.ws({"type": "conversation/process", "text": "Say hello.",
                                "agent_id": agent, "language": "en"}))
    response = answer[-1]["result"]["response"]
    assert response["response_type"] == "action_done", json.dumps(response)
    assert response["speech"]["plain"]["speech"].strip()


def _wyoming_agents(ha: HomeAssistant) -> set[str]:
    registry = asyncio.run(ha.ws({"type": "config/entity_registry/list"}))[-1]["result"]
    return {e["entity_id"] for e in registry if e["platform"] == "wyoming"}
